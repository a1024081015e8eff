"""Every objective's config trains on the tiny corpus through the one trainer; frozen parts stay put."""

import jax
import numpy as np
import pytest
from conftest import fit_one_batch, make_tiny_config
from flax import nnx

from mclap import objectives, parallel
from mclap.config_files import CONFIG_FILE
from mclap.data import pipeline
from mclap.data import tokenizer as tokenizer_lib
from mclap.data.tokenizer import default_tokenizer_dir
from mclap.errors import ConfigError
from mclap.models import bert, spec_from_config
from mclap.serve import bundle
from mclap.training import checkpoints, trainer

pytestmark = pytest.mark.slow
MINILM = default_tokenizer_dir()


@pytest.mark.parametrize(
  "spec",
  [
    "configs/muscall.py:demo",
    "configs/muscall.py:demo,ssl",
    "configs/multipos.py:demo,is",
    "configs/multipos.py:demo,scl",
    "configs/multipos.py:demo,stl",
    "configs/multipos.py:demo,smm",
    "configs/triplet.py:demo",
  ],
)
def test_objective_trains(spec, tiny_corpus):
  losses, *_ = fit_one_batch(make_tiny_config(spec, tiny_corpus))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_choi_word_branch_is_a_trained_linear_map_of_fixed_label_vectors(tiny_corpus):
  config = make_tiny_config("configs/triplet.py:demo", tiny_corpus)
  _, first, state, model_def = fit_one_batch(config, steps=2)
  assert "text" in state["frozen"]["model"] and "text" not in state["params"]["model"]
  assert model_def.merge(state).model.text_projection.kernel.shape == (384, config.model.projection_dim)
  trained = lambda s: s["params"]["model"]["text_projection"]["kernel"][...]  # noqa: E731
  assert not np.allclose(trained(state), trained(first))


def _save_trained_muscall(corpus, directory, as_bundle):
  """A muscall demo model after a few steps, saved as a training workdir's checkpoint or exported
  as a bundle (as an imported MusCALL is)."""
  config = make_tiny_config("configs/muscall.py:demo", corpus)
  _, _, state, model_def = fit_one_batch(config, steps=2)
  if as_bundle:
    variables = bundle.variables_of(model_def.merge(state).model)
    tokenizer = tokenizer_lib.for_config(config).directory
    bundle.write(directory, config, spec_from_config(config), variables, source={}, tokenizer_dir=tokenizer)
  else:
    directory.mkdir()
    (directory / CONFIG_FILE).write_text(config.to_json_best_effort())
    mgr = checkpoints.manager(directory / "checkpoints", None)
    checkpoints.save(mgr, 2, state)
    mgr.wait_until_finished()
  return jax.device_get(state)


@pytest.mark.parametrize("variant, source", [("demo", "workdir"), ("demo,gan", "bundle")])
def test_generator_maps_a_frozen_pretrained_audio_tower_into_the_text_space(variant, source, tiny_corpus, tmp_path):
  config = make_tiny_config(f"configs/generator.py:{variant}", tiny_corpus)
  config.model.audio.init_from = str(tmp_path / source)
  trained = _save_trained_muscall(tiny_corpus, tmp_path / source, as_bundle=source == "bundle")
  other = config.copy_and_resolve_references()
  other.data.mel.fmax = 4000.0  # Mels of other settings than the tower was trained on: refused.
  with pytest.raises(ConfigError, match=rf"init_from=.*{source}: it was trained on other mel settings .*fmax"):
    trainer.init_state(other, parallel.make_mesh(other.mesh), trainer.make_optimizer(other, 10))
  config.optim.lr = 0.05  # SGD at the paper's 1e-3 moves too little in a few steps to test.
  losses, first, state, model_def = fit_one_batch(config)
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  # The audio tower (weights and batch statistics) is the checkpoint's, and stays so.
  for group, saved in (("frozen", trained["params"]), ("batch_stats", trained["batch_stats"])):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state[group]["model"]["audio"]), saved["model"]["audio"])
  # Trained: the generator (4 layers into the 384-d MiniLM space) and the logit scale only.
  assert set(state["params"]) == {"model"}
  assert set(state["params"]["model"]) == {"audio_projection", "logit_scale_param"}
  model = model_def.merge(state).model
  assert [layer.kernel.shape for layer in model.audio_projection.layers[::2]] == [
    (256, 768),
    (768, 768),
    (768, 768),
    (768, 384),
  ]
  assert model.text_projection is None
  if "gan" in variant:
    discriminator = model_def.merge(state).heads["discriminator"]
    assert [layer.kernel.shape for layer in discriminator.layers[::2]] == [(384, 256), (256, 256), (256, 1)]
    moved = jax.tree.map(
      lambda a, b: not np.array_equal(a, b), jax.device_get(state["discriminator"]), first["discriminator"]
    )
    assert all(jax.tree.leaves(moved))


def test_weighted_trains_with_a_frozen_pretrained_sentence_encoder(tiny_corpus, tmp_path):
  config = make_tiny_config("configs/muscall.py:demo,weighted", tiny_corpus)
  losses, first, state, model_def = fit_one_batch(config)
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  assert "heads" not in state["params"] and "sentence_encoder" in state["frozen"]["heads"]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["frozen"]), first["frozen"])
  weights = bert.load_file(str(MINILM / "model.safetensors"))
  loaded = model_def.merge(state).heads["sentence_encoder"].word_embeddings.embedding[...]
  np.testing.assert_array_equal(np.asarray(loaded), weights["embeddings.word_embeddings.weight"])
  # Checkpoints leave the frozen weights out and restore around them.
  mgr = checkpoints.manager(tmp_path, None)
  checkpoints.save(mgr, 1, state)
  mgr.wait_until_finished()
  assert not any("sentence_encoder" in str(p) for p in tmp_path.rglob("*"))
  restored = checkpoints.restore(mgr, 1, state)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


def test_frozen_audio_tower_gets_no_gradient_and_no_optimizer_state(tiny_config):
  tiny_config.model.audio.freeze = True
  losses, first, state, _ = fit_one_batch(tiny_config, steps=3)
  assert "audio" not in state["params"]["model"] and "audio" in state["frozen"]["model"]
  assert losses[-1] < losses[0]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["frozen"]), first["frozen"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["batch_stats"]), first["batch_stats"])
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state["opt_state"])]
  assert any("'audio_projection'" in p for p in paths) and not any("'audio'" in p for p in paths)


def test_pretrained_bert_text_tower_with_its_first_layers_frozen(tiny_corpus):
  config = make_tiny_config("configs/muscall.py:demo", tiny_corpus)
  config.model.text.update(kind="bert", pretrained_dir=str(MINILM), pooling="mean", freeze_layers=4)
  losses, first, state, model_def = fit_one_batch(config, steps=4)
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  layers = lambda group: {int(k[3]) for k, _ in nnx.to_flat_state(group) if k[:3] == ("model", "text", "layers")}  # noqa: E731
  frozen_layers, trained_layers = layers(state["frozen"]), layers(state["params"])
  assert frozen_layers == {0, 1, 2, 3} and trained_layers == {4, 5}
  weights = bert.load_file(str(MINILM / "model.safetensors"))
  np.testing.assert_array_equal(
    np.asarray(model_def.merge(state).model.text.word_embeddings.embedding[...]),
    weights["embeddings.word_embeddings.weight"],
  )


def test_simple_cnn_tower_with_tanh_heads_trains(tiny_config):
  """Sideras et al.'s towers: four conv blocks 16/32/64/128 (batch norm on the last two), heads
  of two layers (1024, 512) with tanh between."""
  head = dict(kind="mlp", hidden=(1024,), activation="tanh")
  tiny_config.model.audio = dict(kind="simple_cnn", channels=(16, 32, 64, 128), batch_norm_blocks=2, head=head)
  tiny_config.model.text.head = head
  tiny_config.model.projection_dim = 512
  losses, _, state, model_def = fit_one_batch(tiny_config, steps=6)
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  model = model_def.merge(state).model
  assert [n is not None for n in model.audio.norms] == [False, False, True, True]
  assert [c.kernel.shape[-1] for c in model.audio.convs] == [16, 32, 64, 128]
  assert model.audio_projection.layers[0].kernel.shape == (128, 1024)
  assert model.audio_projection.layers[2].kernel.shape == (1024, 512)


def test_siglip_trains_its_bias_and_validates_with_its_own_loss(tiny_corpus):
  """SigLIP's bias is the objective's (initialised at -10, trained); its validation loss is the
  sigmoid loss, recomputed in NumPy on the model's inference embeddings, not InfoNCE; with
  `multi`, each clip's three sentences are its positives."""
  config = make_tiny_config("configs/siglip.py:demo,multi", tiny_corpus)
  losses, first, state, model_def = fit_one_batch(config)
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  assert float(first["params"]["heads"]["logit_bias"][...]) == -10.0
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  batch = pipeline.train_dataset(config)[1]
  assert batch["tokens"].shape[:2] == (8, 3)
  loss = float(trainer.make_validation_loss(model_def, mesh)(state, parallel.to_global(batch, mesh)))
  t = model_def.merge(state)
  audio = np.asarray(t.model.embed_audio(batch["mel"], False), np.float64)
  flat = lambda x: x.reshape(24, -1)  # noqa: E731
  text = np.asarray(t.model.embed_text(flat(batch["tokens"]), flat(batch["token_mask"])), np.float64)
  bias = float(t.heads["logit_bias"][...])
  assert bias != -10.0
  logits = float(t.model.logit_scale()) * audio @ text.T + bias
  signs = np.where(batch["index"][:, None] == np.repeat(batch["index"], 3)[None, :], 1.0, -1.0)
  expected = np.logaddexp(0, -signs * logits).sum() / len(audio)
  assert loss == pytest.approx(expected, rel=1e-5)


def test_an_objective_whose_settings_the_config_lacks_names_the_config_that_has_them(tiny_config):
  for name, (keys, config_file) in objectives.SETTINGS.items():
    tiny_config.loss.name = name  # The muscall config's loss section has no other key.
    with pytest.raises(ConfigError, match=rf"reads config.loss.{keys[0]}.* start from {config_file}"):
      objectives.build(tiny_config)
    from_file = make_tiny_config(config_file, tiny_config.data.dir)
    assert from_file.loss.name == name and all(k in from_file.loss for k in keys), config_file
