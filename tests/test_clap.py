"""LAION-CLAP import: a small random-weight CLAP of the released architecture, saved by Hugging
Face transformers (tests/data/make_clap_fixture.py), imported without torch; the imported model,
its front end and tokenizer must give what the PyTorch original gave (stored beside it)."""

import json
import math
import pathlib
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import soundfile
from conftest import ROOT, fit_one_batch, hub_cache, small
from flax import nnx
from safetensors.numpy import load_file, save_file

import mclap
from mclap import cli, evaluation, export, train
from mclap import eval as eval_lib
from mclap.data import mel, pipeline, records
from mclap.errors import ConfigError, UserError
from mclap.models import spec_from_config, weights
from mclap.prepare import synthetic, writer
from mclap.serve import bundle
from mclap.tools import import_clap

DATA = ROOT / "tests" / "data"
RATE = 48000
CAPTIONS = ["calm piano music", "loud drums and a distorted guitar", "a choir singing in a church", "rain"]


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(DATA / "clap_hf_reference.npz"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  return import_clap.import_clap(DATA / "clap_hf", tmp_path_factory.mktemp("clap") / "bundle")


@pytest.fixture(scope="module")
def imported_fused(tmp_path_factory):
  """The fused model made for 2 s clips (as the unfused one), which makes its training cheap here."""
  hf = tmp_path_factory.mktemp("clap_fused") / "hf"
  shutil.copytree(DATA / "clap_hf_fused", hf)
  front = json.loads((hf / "preprocessor_config.json").read_text())
  (hf / "preprocessor_config.json").write_text(json.dumps({**front, "max_length_s": 2, "nb_max_samples": 2 * RATE}))
  return import_clap.import_clap(hf, hf.parent / "bundle")


def close(ours, theirs, atol):
  """Equal within `atol`, and every row at cosine 0.9999 or more."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  np.testing.assert_allclose(ours, theirs, atol=atol)
  cosine = (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
  assert cosine.min() >= 0.9999


def test_a_hub_cache_folder_imports_as_the_model_it_holds(imported, tmp_path):
  """`huggingface-cli download laion/larger_clap_music` without `--local-dir`: the cache folder
  users pass is the snapshot it holds, tokenizer included."""
  cache = hub_cache(DATA / "clap_hf", tmp_path / "hub", "laion/larger_clap_music")
  out = import_clap.import_clap(cache, tmp_path / "bundle")
  ours, theirs = (mclap.load(b) for b in (out, imported))
  np.testing.assert_array_equal(ours.embed_text(CAPTIONS), theirs.embed_text(CAPTIONS))
  with pytest.raises(UserError, match=rf"hub is not a folder with config.json; did you mean --checkpoint {cache}\?$"):
    import_clap.import_clap(tmp_path / "hub", tmp_path / "bundle2")


def test_the_clap_preset_is_the_released_front_end(reference):
  """ClapFeatureExtractor as the released models use it (10 s, "repeatpad") on a 3 s tone and a
  10 s chirp (made as make_clap_fixture.front_wave makes them)."""
  t = np.arange(RATE * 10) / RATE
  waves = [0.5 * np.sin(2 * np.pi * 440 * t[: RATE * 3]), 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t)]
  samples = RATE * 10
  for wave, theirs in zip(waves, reference["front_mels"][:, 0]):
    clip = pipeline.waveform_crops(wave.astype(np.float32), samples, 1, "repeat")[0]
    ours = mel.log_mel(clip, mel.clap_config().to_dict()).T
    loud = theirs > theirs.max() - 80  # Within 80 dB of the peak: float32 noise below that.
    assert np.abs(ours - theirs)[loud].max() < 1e-3 and np.abs(ours - theirs).max() < 0.05


def test_imported_towers_and_heads_equal_the_original(imported, reference):
  _, model = bundle.read(imported)
  mels = reference["mels"][:, 0].transpose(0, 2, 1)  # [batch, 1, frames, mels] -> [batch, mels, frames]
  close(model.audio_features(mels), reference["audio_pooled"], atol=2e-5)
  close(model.embed_audio(mels), reference["audio_embeds"], atol=2e-6)
  tokens, mask = reference["token_ids"], reference["token_mask"]
  close(model.text_features(tokens, mask), reference["text_pooled"], atol=2e-6)
  close(model.embed_text(tokens, mask), reference["text_embeds"], atol=2e-6)
  assert float(model.logit_scale()) == pytest.approx(float(reference["logit_scale"]), rel=1e-6)


def test_a_loaded_import_embeds_waveforms_and_captions_as_the_original(imported, reference):
  """Through `mclap.load`: the front end (repeating the 1 s clip to the model's 2 s), the
  tokenizer and the towers (waveforms made as make_clap_fixture.model_waves makes them)."""
  model = mclap.load(imported, batch_size=2)
  assert (model.crop, model.pad, model.sample_rate) == ("waveform", "repeat", RATE)
  t = np.arange(RATE * 2) / RATE
  tones = [0.4 * np.sin(2 * np.pi * 330 * t[:RATE]), 0.4 * np.sin(2 * np.pi * 880 * t)]
  waves = [w.astype(np.float32) for w in (*tones, 0.2 * np.random.default_rng(0).standard_normal(RATE * 2))]
  close(model.embed_audio(waves), reference["audio_embeds"], atol=1e-4)
  ids, mask = model.tokenizer(CAPTIONS)
  width = reference["token_ids"].shape[1]
  np.testing.assert_array_equal(mask[:, :width], reference["token_mask"])
  np.testing.assert_array_equal(
    np.where(mask == 1, ids, 0)[:, :width], reference["token_ids"] * reference["token_mask"]
  )
  close(model.embed_text(CAPTIONS), reference["text_embeds"], atol=2e-6)
  scores = model.zero_shot(waves, ["piano", "rain"])
  assert scores.shape == (3, 2)


def test_the_fused_tower_equals_the_original_on_its_four_view_input(tmp_path):
  """A fused model (a local patch embedding of three 10 s windows, joined to the global view by
  attentional feature fusion) on the views ClapFeatureExtractor made of a 12 s clip (fused) and a
  3 s one (four equal views: nothing to fuse)."""
  reference = dict(np.load(DATA / "clap_hf_fused_reference.npz"))
  hf = json.loads((DATA / "clap_hf_fused/config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**hf["text_config"], "model_type": "roberta"}))
  spec = spec_from_config(import_clap.clap_config(hf, {}, str(tmp_path)), vocab_size=0)
  assert spec.audio["fusion"] and spec.crop_frames == 1001
  graphdef, state = nnx.split(bundle.abstract_model(spec))
  variables, _ = import_clap.clap_variables(load_file(str(DATA / "clap_hf_fused/model.safetensors")), hf)
  state.replace_by_pure_dict(jax.tree.map(np.asarray, variables))
  mels = reference["input_features"].astype(np.float32).transpose(0, 1, 3, 2)  # [clips, views, mels, frames]
  np.testing.assert_array_equal(reference["is_longer"].ravel(), [True, False])
  close(nnx.merge(graphdef, state).audio_features(mels), reference["audio_pooled"], atol=2e-5)


class _Replay:
  """Draws the original's window starts, each of which must lie in the part it is drawn from."""

  def __init__(self, starts):
    self.starts = iter(starts)

  def choice(self, part):
    start = next(self.starts)
    assert start in part, (start, part)
    return start


def test_a_fused_model_imports_and_embeds_files_as_the_original(tmp_path):
  """A fused model's bundle through `mclap.load`: its front end gives the original's four views
  (float16-stored: 0.02 dB) of a 12 s clip when placed at the original's window starts, and of a
  3 s clip; the views embed as the original embeds them; the 3 s file embeds as the original
  does (a 12 s one takes the middle windows, where the original draws them at random)."""
  reference = dict(np.load(DATA / "clap_hf_fused_reference.npz"))
  model = mclap.load(import_clap.import_clap(DATA / "clap_hf_fused", tmp_path / "fused"), batch_size=2)
  assert (model.crop, model.mel_config["htk"]) == ("fusion", True)
  rng = np.random.default_rng(2)  # The fixture's clips (make_clap_fixture.fused_fixture).
  waves = [(0.3 * rng.standard_normal(int(RATE * seconds))).astype(np.float32) for seconds in (12.0, 3.0)]
  theirs = reference["input_features"].astype(np.float32).transpose(0, 1, 3, 2)  # [clips, views, mels, frames]
  placed = pipeline.fusion_views(
    mel.log_mel(waves[0], model.mel_config), model.crop_frames, rng=_Replay(reference["fusion_starts"])
  )
  np.testing.assert_allclose(placed, theirs[0], atol=0.02)
  np.testing.assert_allclose(model.mel_crops(waves[1])[0], theirs[1], atol=0.02)
  close(model.embed_mels([views[None] for views in theirs]), reference["audio_embeds"], atol=2e-6)
  close(model.embed_audio(waves[1:]), reference["audio_embeds"][1:], atol=2e-5)
  with pytest.raises(UserError, match="fused CLAP models take crop=fusion"):
    model.embed_audio(waves[1:], crop="waveform")


def test_a_laion_clap_checkpoint_imports_and_embeds_as_the_original(imported, tmp_path):
  """A `.pt` of the laion_clap package (its own classes and torchlibrosa front end made the
  reference): sizes from the arrays' shapes, names mapped, q/k/v split, the filterbank checked."""
  reference = dict(np.load(DATA / "clap_laion_reference.npz"))
  with pytest.raises(UserError, match="needs --tokenizer_dir"):
    import_clap.import_clap(DATA / "clap_laion.pt", tmp_path / "none")
  out = import_clap.import_clap(
    DATA / "clap_laion.pt", tmp_path / "laion", tokenizer_dir=DATA / "clap_hf", text_heads=2, crop_seconds=2.0
  )
  meta = bundle.read_meta(out)
  assert meta["spec"].audio == bundle.read_meta(imported)["spec"].audio  # The same small architecture.
  model = mclap.load(out, batch_size=2)
  t = np.arange(RATE * 2) / RATE
  waves = [0.4 * np.sin(2 * np.pi * 880 * t), 0.2 * np.random.default_rng(0).standard_normal(RATE * 2)]
  close(model.embed_audio([w.astype(np.float32) for w in waves]), reference["audio_embeds"], atol=1e-5)
  close(model.embed_text(CAPTIONS), reference["text_embeds"], atol=2e-6)
  filters = mel.filterbank(meta["config"].data.mel.to_dict())
  with pytest.raises(UserError, match="not the clap preset's"):
    import_clap.check_filterbank(filters * 1.01, {"fft_window_size": 1024}, 16, DATA / "clap_laion.pt")


def test_other_architectures_and_unknown_arrays_are_refused(tmp_path):
  other = tmp_path / "other"  # A fusion mclap does not build (1-D attentional fusion).
  shutil.copytree(DATA / "clap_hf_fused", other)
  config = json.loads((other / "config.json").read_text())
  config["audio_config"]["fusion_type"] = "aff_1d"
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match="fusion_type 'aff_1d' is not one mclap builds"):
    import_clap.import_clap(other, tmp_path / "b1")
  extra = tmp_path / "extra"
  shutil.copytree(DATA / "clap_hf", extra)
  state = load_file(str(extra / "model.safetensors"))
  state["audio_model.audio_encoder.tscam_conv.weight"] = np.zeros((2, 2), np.float32)
  save_file(state, str(extra / "model.safetensors"))
  with pytest.raises(UserError, match=r"1 arrays of the checkpoint have no place.*tscam_conv"):
    import_clap.import_clap(extra, tmp_path / "b2")
  assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()


@pytest.mark.parametrize(
  "audio, counts",
  [
    # Parameters per part of transformers' ClapModel on these configs (counted with torch once):
    # HTS-AT tiny (laion/clap-htsat-unfused) and base (laion/larger_clap_music), RoBERTa-base text.
    ({}, dict(audio=27534488, text=124645632, audio_projection=656384, text_projection=656384)),
    (
      dict(patch_embeds_hidden_size=128, depths=[2, 2, 12, 2], hidden_size=1024),
      dict(audio=67824408, text=124645632, audio_projection=787456, text_projection=656384),
    ),
  ],
)
def test_released_sizes_build_with_the_originals_parameter_counts(tmp_path, audio, counts):
  hf = dict(
    audio_config=dict(
      num_mel_bins=64,
      spec_size=256,
      patch_size=4,
      patch_embeds_hidden_size=96,
      depths=[2, 2, 6, 2],
      num_attention_heads=[4, 8, 16, 32],
      window_size=8,
      hidden_size=768,
    )
    | audio,
    text_config=dict(
      model_type="roberta",
      vocab_size=50265,
      hidden_size=768,
      num_hidden_layers=12,
      num_attention_heads=12,
      intermediate_size=3072,
      max_position_embeddings=514,
      type_vocab_size=1,
      pad_token_id=1,
    ),
    projection_dim=512,
  )
  (tmp_path / "config.json").write_text(json.dumps(hf["text_config"]))
  spec = spec_from_config(import_clap.clap_config(hf, {}, str(tmp_path)), vocab_size=0)
  assert spec.crop_frames == 1001 and spec.max_tokens == 77
  params = nnx.state(bundle.abstract_model(spec), nnx.Param).to_pure_dict()
  found = {part: sum(math.prod(x.shape) for x in jax.tree.leaves(params[part])) for part in counts}
  assert found == counts


def test_the_import_embeds_new_inputs_as_transformers_does(imported):
  """With torch at hand (not a dependency of mclap), against the live original on fresh inputs."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  original = transformers.ClapModel.from_pretrained(str(DATA / "clap_hf")).eval()
  mels = np.random.default_rng(1).normal(-40.0, 15.0, (2, 1, 201, 16)).astype(np.float32)
  tokens = np.array([[0, 40, 41, 42, 2, 1], [0, 50, 2, 1, 1, 1]])
  with torch.no_grad():
    audio = original.get_audio_features(input_features=torch.from_numpy(mels)).pooler_output.numpy()
    text = original.get_text_features(
      input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy((tokens != 1).astype(np.int64))
    ).pooler_output.numpy()
  _, model = bundle.read(imported)
  close(model.embed_audio(mels[:, 0].transpose(0, 2, 1)), audio, atol=2e-6)
  close(model.embed_text(tokens, (tokens != 1).astype(np.int32)), text, atol=2e-6)


def _window_starts(mel: np.ndarray, views: np.ndarray) -> list[int]:
  """Where in `mel` each of the views 1-3 (the windows of a fused model's input) starts."""
  length = views.shape[-1]
  starts = range(mel.shape[1] - length + 1)
  return [next(s for s in starts if np.array_equal(mel[:, s : s + length], view)) for view in views[1:]]


@pytest.mark.slow
def test_configs_clap_fine_tunes_a_fused_import_and_exports_it(imported_fused, tmp_path):
  """`configs/finetune.py:BUNDLE` rebuilds the bundle's model, starts from its weights, trains on a
  corpus prepared with its mel settings on the four views of each clip (the whole clip shrunk, and
  windows drawn in each third of the clip, as CLAP trains), the loss falls on a fixed batch, and
  the trained model exports to a bundle that cuts clips as the import did."""
  meta = bundle.read_meta(imported_fused)
  mel_config = meta["config"].data.mel.to_dict()
  corpus, workdir = tmp_path / "corpus", tmp_path / "run"
  splits = synthetic.plan_clips(80, 0, 3.0)
  writer.write_corpus(
    corpus, splits, synthetic.make_record_fn(mel_config), mel_config=mel_config, source="synthetic",
    extra_info={"label_names": synthetic.LABEL_NAMES}, num_workers=0, shard_size=64, show_progress=False,
  )  # fmt: skip
  config = cli.load_config(f"configs/finetune.py:{imported_fused},demo")
  assert spec_from_config(config) == meta["spec"] and config.data.crop == "fusion"
  config.data.update(dir=str(corpus), num_workers=0, eval_batch_size=8)
  config.train.batch_size = 8
  config.optim.lr = 1e-3  # Enough to see the loss fall within a few steps.

  batch, reader = pipeline.train_dataset(config)[0], records.CorpusReader(corpus, "train")
  assert batch["mel"].shape == (8, 4, 64, meta["spec"].crop_frames)
  drawn = []
  for index, views in zip(batch["index"], batch["mel"]):
    whole = reader[int(index)]["mel"]
    np.testing.assert_array_equal(views[0], pipeline.fusion_views(whole, views.shape[-1])[0])
    thirds = np.array_split(np.arange(whole.shape[1] - views.shape[-1] + 1), 3)
    drawn.append(starts := _window_starts(whole, views))
    assert all(start in third for start, third in zip(starts, thirds))
  assert len({tuple(starts) for starts in drawn}) > 1  # Drawn, not fixed.
  with pytest.raises(ConfigError, match="crop=fusion .* takes no augmentation"):
    augmented = ml_collections.ConfigDict(config.to_dict())
    augmented.data.augment.gain_prob = 0.5
    pipeline.train_dataset(augmented)

  losses, first, _, _ = fit_one_batch(config, steps=4)
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  variables = weights.read_arrays(imported_fused / weights.BUNDLE_VARIABLES)
  started = {**first["params"]["model"]["audio"], **first["batch_stats"]["model"]["audio"]}
  for name in ("patch_kernel", "local_kernel"):
    np.testing.assert_array_equal(started[name], variables["audio"][name])
  np.testing.assert_array_equal(started["input_norm"]["mean"], variables["audio"]["input_norm"]["mean"])
  small(config, steps=2).optim.warmup_steps = 0  # The steps' optimizer above: the job reuses their compiled step.
  train.train(config, workdir)
  out = export.export(workdir, tmp_path / "tuned")
  model = mclap.load(out)
  assert (model.crop, model.pad) == ("fusion", "repeat")
  assert model.embed_text(["rain"]).shape == (1, meta["spec"].projection_dim)


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True])
def test_mclap_eval_embeds_a_corpus_cut_like_the_import(fused, request, tmp_path, capsys):
  """Files shorter, as long as, and longer than the model's 2 s, prepared for the bundle
  (`--config configs/finetune.py:B`) with the waveform cut to 2 s and short files repeated (fused
  models: longer files kept whole): `mclap.eval --bundle` embeds them as `mclap.load(...).embed_audio`
  embeds the files. A fused model warns of a corpus cut for an unfused one."""
  imported = request.getfixturevalue("imported_fused" if fused else "imported")
  audio_dir, corpus = tmp_path / "audio", tmp_path / "corpus"
  audio_dir.mkdir()
  rng = np.random.default_rng(3)
  for n, seconds in enumerate((1.0, 2.0, 3.1)):
    soundfile.write(audio_dir / f"{n}.wav", 0.3 * rng.standard_normal(int(RATE * seconds)), RATE, subtype="FLOAT")
  (tmp_path / "metadata.csv").write_text(
    "path,caption,split\n" + "".join(f"audio/{n}.wav,c{n},test\n" for n in range(3))
  )
  prepare = [sys.executable, "-m", "mclap.prepare", "--source", "folder", "--input", tmp_path, "--output", corpus]
  prepare += ["--config", f"configs/finetune.py:{imported}", "--waveform_crop_seconds", 2, "--waveform_pad", "repeat"]
  prepare += ["--num_workers", 0] + (["--waveform_keep_longer"] if fused else [])
  subprocess.run(list(map(str, prepare)), cwd=ROOT, check=True, capture_output=True)
  config = cli.load_config(f"configs/finetune.py:{imported}")
  config.data.update(dir=str(corpus), eval_batch_size=8)
  config = eval_lib.with_bundle_data(config, imported)
  evaluation.select(config, ["retrieval"])
  assert "warning" not in capsys.readouterr().out
  found = eval_lib.make_context(config, eval_lib.load(config, bundle=imported)[0]).embeddings("test")["audio"]
  reader = records.CorpusReader(corpus, "test")
  files = [audio_dir / pathlib.Path(reader[i]["id"]).name for i in range(len(reader))]
  if fused:
    info = records.read_info(corpus)
    frames = {pathlib.Path(reader[i]["id"]).name: reader[i]["mel"].shape[1] for i in range(len(reader))}
    assert frames == {"0.wav": 201, "1.wav": 201, "2.wav": 311} and info["waveform_keep_longer"]
    (corpus / records.INFO_FILE).write_text(json.dumps({**info, "waveform_keep_longer": False}))
    evaluation.select(config, ["retrieval"])
    assert "holds only the central 2 s of longer files" in capsys.readouterr().out
  close(found, mclap.load(imported).embed_audio(files), atol=2e-4)  # Corpora keep mels in float16.
