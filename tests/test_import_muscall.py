"""Import of original MusCALL checkpoints: the torch-free checkpoint reader against a file written
by real torch, and a MusCALL state_dict (original key names and shapes, random values) whose
imported embeddings must equal a numpy re-computation of the original forward pass."""

import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import soundfile
from conftest import ROOT, hub_cache, tone
from flax import nnx, traverse_util
from muscall_reference import (
  CROP_SECONDS,
  SR,
  TEXT_LAYERS,
  TEXT_WIDTH,
  clip_tokenizer_files,
  htk_filterbank,
  muscall_audio,
  muscall_ids,
  muscall_state_dict,
  muscall_text,
  normalized,
  torchaudio_log_mel,
)

import mclap
from mclap import cli, evaluation
from mclap import eval as eval_lib
from mclap.data import mel as mel_lib
from mclap.data import records
from mclap.errors import ConfigError, UserError
from mclap.evaluation import metrics
from mclap.models import build_model, spec_from_config, weights
from mclap.serve import bundle
from mclap.tools import import_muscall, state_dict, torch_checkpoint

DATA = ROOT / "tests" / "data"


def test_reader_matches_a_checkpoint_written_by_torch():
  loaded = torch_checkpoint.load(DATA / "torch_checkpoint.pth.tar")
  expected = np.load(DATA / "torch_checkpoint.npz")
  assert loaded["epoch"] == 3 and loaded["optimizer"]["param_groups"] == [{"lr": 5e-5}]
  state = loaded["state_dict"]
  assert list(state) == list(expected.files)
  for key in expected.files:
    assert state[key].shape == expected[key].shape, key
    np.testing.assert_array_equal(state[key].astype(np.float32), expected[key], err_msg=key)
  assert state["half"].dtype == np.float16 and state["num_batches_tracked"].dtype == np.int64
  assert str(state["bf16"].dtype) == "bfloat16" and state["mask"].dtype == np.bool_


def test_reader_never_runs_code_in_the_pickle(tmp_path, monkeypatch):
  class Exploit:
    def __reduce__(self):
      return (os.system, ("touch pwned",))

  monkeypatch.chdir(tmp_path)
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": Exploit()}))
  kept = torch_checkpoint.load(path)["state_dict"]  # The call is kept as data, never made.
  assert type(kept).kind in ("posix.system", "os.system") and kept.args == ("touch pwned",)
  with pytest.raises(UserError, match=r"holds no state dict of arrays \(a dict of \['state_dict'\]\)"):
    state_dict.read(path)
  assert not (tmp_path / "pwned").exists()
  (tmp_path / "legacy.pth").write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(UserError, match="not a zip-format PyTorch checkpoint"):
    torch_checkpoint.load(tmp_path / "legacy.pth")


class _Empty:  # Pickled by NEWOBJ with no state: its __init__ is never called when it loads.
  pass


class _Bag(dict):  # Pickled with SETITEMS on the object.
  pass


def test_objects_of_classes_the_reader_does_not_load_are_kept_as_data(tmp_path):
  path = tmp_path / "objects.pt"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps({"empty": _Empty(), "bag": _Bag(lr=0.1)}, protocol=2))
  loaded = torch_checkpoint.load(path)
  assert type(loaded["empty"]).kind.endswith("._Empty") and loaded["empty"].state is None
  assert type(loaded["bag"]).kind.endswith("._Bag") and loaded["bag"].items == {"lr": 0.1}


def test_the_state_dict_of_a_whole_pickled_model_and_of_a_checkpoint_with_script_objects():
  """Written by torch (tests/data/make_torch_fixture.py): `torch.save(model)`, whose classes are
  not importable here, and {"args": argparse.Namespace, "state_dict", "dtype": torch.float16}.
  Both used to be refused whole for holding a Python object mclap does not load."""
  expected = np.load(DATA / "torch_module.npz")
  assert "scratch" not in expected.files and "blocks.0.num_batches_tracked" in expected.files
  for name in ("torch_module.pt", "torch_with_args.pt"):
    found = state_dict.read(DATA / name)
    assert list(found) == list(expected.files), name
    for key in expected.files:
      np.testing.assert_array_equal(found[key].astype(np.float32), expected[key], err_msg=f"{name}: {key}")
  assert type(torch_checkpoint.load(DATA / "torch_with_args.pt")["args"]).kind == "argparse.Namespace"


def test_a_checkpoint_or_tokenizer_named_one_level_off_gets_the_one_meant(tmp_path):
  """The run folder instead of its checkpoint, a suffix left out, the folder above the tokenizer's:
  each was 'not found' (or 'has neither tokenizer.json ...') without saying what was there."""
  run = tmp_path / "run"
  (run / "clip").mkdir(parents=True)
  checkpoint = run / "best_model.pth.tar"
  checkpoint.write_bytes((DATA / "torch_checkpoint.pth.tar").read_bytes())
  (run / "config.yaml").write_text("")
  for given in (run, run / "best_model.pth"):
    with pytest.raises(UserError, match=re.escape(f"; did you mean --checkpoint {checkpoint}?")):
      state_dict.read(given)
  for name in ("vocab.json", "merges.txt"):
    (run / "clip" / name).write_text("")
  with pytest.raises(UserError, match=re.escape(f"did you mean --tokenizer_dir {run / 'clip'}?")):
    import_muscall.clip_tokenizer_dir(run, tmp_path)


def test_the_state_dict_is_found_in_the_wrappers_training_scripts_save(tmp_path, monkeypatch):
  (tmp_path / "best.pth").write_bytes(b"")  # Read through the layouts below, never parsed.
  weights = {"audio_backbone.conv1.weight": np.ones((2, 1, 3, 3)), "logit_scale": np.array(2.6)}
  layouts = [
    {"epoch": 3, "state_dict": weights, "optimizer": {"state": {}}},  # MusCALL's own.
    {"model": {f"module.{k}": v for k, v in weights.items()}, "optimizer": {}},  # DataParallel, under "model".
    {"state_dict": {f"model.{k}": v for k, v in weights.items()}, "global_step": 9},  # Lightning's self.model.
    {"model_state_dict": weights},
  ]
  for layout in layouts:
    monkeypatch.setattr(torch_checkpoint, "load", lambda path, layout=layout: layout)
    found = state_dict.read(tmp_path / "best.pth")
    assert found.keys() == weights.keys(), layout
    for key, array in weights.items():
      np.testing.assert_array_equal(found[key], array)
  monkeypatch.setattr(torch_checkpoint, "load", lambda path: {"epoch": 3, "optimizer": {}})
  with pytest.raises(UserError, match=r"holds no state dict of arrays \(a dict of \['epoch', 'optimizer'\]\)"):
    state_dict.read(tmp_path / "best.pth")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """(state_dict in float64, tokenizer dir, bundle dir) of a random MusCALL checkpoint imported from .npz."""
  tmp = tmp_path_factory.mktemp("muscall")
  vocab = clip_tokenizer_files(tmp / "clip")
  state = muscall_state_dict(vocab, np.random.default_rng(0))
  checkpoint = tmp / "best_model.npz"
  np.savez(checkpoint, **state)
  bundle = import_muscall.import_muscall(checkpoint, tmp / "clip", tmp / "bundle")
  return {k: v.astype(np.float64) for k, v in state.items()}, tmp / "clip", bundle


@pytest.mark.slow
def test_imported_embeddings_equal_the_original_forward_pass(imported):
  state, clip_dir, bundle = imported
  model = mclap.load(bundle, batch_size=2)
  assert model.config.data.mel.htk and model.config.data.mel.fmax == 11025.0
  seconds = CROP_SECONDS
  waves = [tone(seconds, SR, freq=330.0).astype(np.float32), tone(seconds, SR, freq=1250.0).astype(np.float32) * 0.3]
  np.testing.assert_allclose(model.mel_crops(waves[0])[0], torchaudio_log_mel(waves[0]), atol=2e-3)
  np.testing.assert_allclose(model.embed_audio(waves), normalized(muscall_audio(state, waves)), atol=2e-4)

  from transformers import CLIPTokenizer  # An independent tokenizer implementation of the same files.

  texts = ["calm piano", "Piano, PIANO!", ""]
  ids, _ = muscall_ids(CLIPTokenizer.from_pretrained(str(clip_dir), local_files_only=True), texts)
  ours, mask = model.tokenizer(texts)
  np.testing.assert_array_equal(np.where(mask == 1, ours, 0), ids)
  np.testing.assert_allclose(model.embed_text(texts), normalized(muscall_text(state, ids)), atol=2e-4)
  assert model.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


@pytest.mark.slow
def test_a_muscall_trained_with_clip_text_model_embeds_texts_as_hugging_face_computes(imported, tmp_path):
  """MusCALL's other text model, `CLIPTextModel` (Hugging Face's CLIP text encoder), imports into
  the same tower with CLIP's quick GELU: its texts embed as transformers computed them
  (tests/data/make_clip_text_fixture.py)."""
  audio_state, clip_dir, _ = imported
  fixture = np.load(DATA / "muscall_clip_text.npz")
  text_state = {k.removeprefix("state/"): fixture[k] for k in fixture.files if k.startswith("state/")}
  width = text_state["textual_head.text_model.final_layer_norm.weight"].shape[0]
  rng = np.random.default_rng(1)
  state = {k: v.astype(np.float32) for k, v in audio_state.items() if not k.startswith("textual_head.")}
  state |= {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in text_state.items()}
  state["text_projection.weight"] = (rng.standard_normal((512, width)) / np.sqrt(width)).astype(np.float32)
  np.savez(tmp_path / "clip_text.npz", **state)
  config = import_muscall.muscall_config(state)
  assert config.model.text.activation == "quick_gelu" and config.model.text.heads == 1  # CLIP's width / 64.
  bundle_dir = import_muscall.import_muscall(tmp_path / "clip_text.npz", clip_dir, tmp_path / "bundle", text_heads=2)
  model = mclap.load(bundle_dir, batch_size=2)
  texts = list(fixture["texts"])
  ours, mask = model.tokenizer(texts)
  np.testing.assert_array_equal(np.where(mask == 1, ours, 0)[:, : fixture["ids"].shape[1]], fixture["ids"])
  expected = normalized(fixture["pooler_output"].astype(np.float64) @ state["text_projection.weight"].T)
  np.testing.assert_allclose(model.embed_text(texts), expected, atol=2e-5)


@pytest.mark.slow
def test_a_muscall_with_average_pooling_embeds_audio_as_the_original(imported, tmp_path):
  """MusCALL's other audio pooling (`pooling: average`: the mean over the last feature map, then
  `final_linear`) imports and embeds as the original's forward pass."""
  _, clip_dir, _ = imported
  vocab = json.loads((clip_dir / "vocab.json").read_text())
  state = muscall_state_dict(len(vocab), np.random.default_rng(2), pooling="average")
  np.savez(tmp_path / "average.npz", **state)
  model = mclap.load(import_muscall.import_muscall(tmp_path / "average.npz", clip_dir, tmp_path / "bundle"))
  assert model.spec.audio["pooling"] == "average" and model.spec.audio["output_dim"] == 256
  waves = [tone(CROP_SECONDS, SR, freq=330.0).astype(np.float32), tone(CROP_SECONDS, SR, freq=1250.0) * 0.3]
  expected = normalized(muscall_audio({k: v.astype(np.float64) for k, v in state.items()}, waves))
  np.testing.assert_allclose(model.embed_audio(waves), expected, atol=2e-4)


# What MusCALL's trainer saves as config.yaml in the experiment folder (OmegaConf.save of the run's
# merged config; parts left out), for a run with its own mel settings, audio length (written as an
# interpolation, which OmegaConf saves unresolved) and text heads.
RUN_CONFIG = """\
env:
  experiment_id: 2022-05-01-10_00_00
  experiments_dir: save/experiments
dataset_config:
  dataset_name: audiocaption
  data_dir: ${env.data_root}/datasets/${dataset_config.dataset_name}
  text:
    max_seq_length: 32
    tokenizer: cliptokenizer
  audio:
    sr: 22050
    crop_length: 10
model_config:
  model_name: muscall
  projection_dim: 512
  temperature: null
  audio:
    model: ModifiedResNet
    pooling: attention
    audio_len_seconds: ${dataset_config.audio.crop_length}
    hidden_size: 256
    conv_out_channels: 16
    n_mels: 128
    sample_rate: 22050
    n_fft: 2048
    f_min: 0
    f_max: null
  text:
    model: TextTransformer
    pretrained: openai/clip-vit-base-patch32
    num_hidden_layers: 4
    hidden_size: 512
    num_attention_heads: 4
    max_position_embeddings: 77
  loss: clip
"""


@pytest.mark.slow
def test_a_run_with_its_own_mel_settings_and_heads_imports_by_its_config_yaml(imported, tmp_path, capsys, monkeypatch):
  """A MusCALL trained at 22.05 kHz with n_fft 2048, f_max the Nyquist frequency, 10 s crops and a
  4-head text model: the arrays show none of that but the filterbank's shape, and such a checkpoint
  was refused (a 4-head one with the released mel settings imported as 8 heads, silently wrong).
  The run's config.yaml beside the checkpoint (or --muscall_config) gives them. The run's folder
  stands for its best_model.pth.tar, as MusCALL's own evaluation reads it."""
  _, clip_dir, _ = imported
  mel = dict(sr=22050, n_fft=2048, fmax=11025.0)
  vocab = len(json.loads((clip_dir / "vocab.json").read_text()))
  state = muscall_state_dict(vocab, np.random.default_rng(4), seconds=10, **mel)
  run, elsewhere = tmp_path / "2022-05-01-10_00_00", tmp_path / "copied"
  for folder in (run, elsewhere):
    folder.mkdir()
    np.savez(folder / "best_model.npz", **state)
  (run / "config.yaml").write_text(RUN_CONFIG)
  (elsewhere / "config.yaml").write_text("")  # Beside, but not MusCALL's: said and passed over.
  with pytest.raises(UserError, match=r"has shape \[1025, 128\], the released config's settings \(sample_rate 16000"):
    import_muscall.import_muscall(elsewhere / "best_model.npz", clip_dir, tmp_path / "b1")
  assert "config.yaml has no model_config.audio" in capsys.readouterr().out
  assert import_muscall.saved_settings(elsewhere / "best_model.npz", run) == (
    {
      "model_config.audio.sample_rate": 22050,
      "model_config.audio.n_fft": 2048,
      "model_config.audio.n_mels": 128,
      "model_config.audio.f_min": 0.0,
      "model_config.audio.f_max": None,
      "model_config.audio.audio_len_seconds": 10.0,
      "model_config.text.num_attention_heads": 4,
      "dataset_config.text.max_seq_length": 32,
    },
    str(run / "config.yaml"),
  )
  wrong = {
    "sample_rate: 22050": ("sample_rate: fast", "sample_rate is 'fast', not a number"),
    "crop_length: 10": ("", r"refers to \$\{dataset_config.audio.crop_length\}, which the file does not set"),
    "tokenizer: cliptokenizer": ("tokenizer: berttokenizer", "tokenized with 'berttokenizer'"),
  }
  for line, (replaced, message) in wrong.items():
    (elsewhere / "wrong.yaml").write_text(RUN_CONFIG.replace(line, replaced))
    with pytest.raises(UserError, match=message):
      import_muscall.saved_settings(elsewhere / "best_model.npz", elsewhere / "wrong.yaml")
  other = RUN_CONFIG.replace("sample_rate: 22050", "sample_rate: 16000").replace("n_fft: 2048", "n_fft: 1024")
  (elsewhere / "other.yaml").write_text(other)  # Another run's settings.
  with pytest.raises(UserError, match=r"the settings of .*other.yaml .* give \[513, 128\]: the checkpoint is not of"):
    import_muscall.import_muscall(
      elsewhere / "best_model.npz", clip_dir, tmp_path / "b2", muscall_config_file=elsewhere / "other.yaml"
    )

  best, read = run / "best_model.pth.tar", state_dict.read
  best.write_bytes(b"")  # Read as the .npz beside it.
  monkeypatch.setattr(state_dict, "read", lambda path: read(run / "best_model.npz") if path == best else pytest.fail())
  model = mclap.load(import_muscall.import_muscall(run, clip_dir, tmp_path / "bundle"))
  out = capsys.readouterr().out
  assert f"reading {best}, the run's best model" in out
  assert f"the run's settings from {run / 'config.yaml'}: model_config.audio.sample_rate 22050, " in out
  assert model.spec.text["heads"] == 4 and model.config.data.crop_seconds == 10.0
  assert model.config.data.max_tokens == 32  # Where the run cut its captions (its text has 77 positions).
  assert (model.config.data.mel.sample_rate, model.config.data.mel.hop_length) == (22050, 1024)
  state = {k: v.astype(np.float64) for k, v in state.items()}
  waves = [tone(10.0, 22050, freq=330.0).astype(np.float32), tone(10.0, 22050, freq=2500.0).astype(np.float32) * 0.3]
  np.testing.assert_allclose(model.embed_audio(waves), normalized(muscall_audio(state, waves, **mel)), atol=2e-4)
  from transformers import CLIPTokenizer

  texts = ["calm piano", "a fast drum loop with distorted bass"]  # The second is cut at 32 tokens.
  ids, _ = muscall_ids(CLIPTokenizer.from_pretrained(str(clip_dir), local_files_only=True), texts, max_len=32)
  tokens, mask = model.tokenizer(texts)
  np.testing.assert_array_equal(np.where(mask == 1, tokens, 0), ids)
  assert (ids[1] > 0).all()
  np.testing.assert_allclose(model.embed_text(texts), normalized(muscall_text(state, ids, heads=4)), atol=2e-4)


def test_configs_finetune_starts_from_an_imported_muscall_bundle(imported):
  """A MusCALL checkpoint people have is a starting point: `configs/finetune.py:BUNDLE` rebuilds
  the bundle's model, reads its mels, crops and tokens, and starts from every one of its weights."""
  _, _, bundle_dir = imported
  meta = bundle.read_meta(bundle_dir)
  config = cli.load_config(f"configs/finetune.py:{bundle_dir},demo")
  spec = spec_from_config(config)
  assert spec == meta["spec"] and spec.text["kind"] == "transformer"
  assert config.data.mel == meta["config"].data.mel and config.data.crop == "waveform"
  model = build_model(spec, nnx.Rngs(0))
  weights.load_pretrained(model, config)
  saved = traverse_util.flatten_dict(weights.read_arrays(bundle_dir / weights.BUNDLE_VARIABLES))
  for kind in (nnx.Param, nnx.BatchStat):
    for path, value in traverse_util.flatten_dict(nnx.state(model, kind).to_pure_dict()).items():
      np.testing.assert_array_equal(value, saved[tuple(map(str, path))], err_msg=str(path))
  config.data.mel.fmax = 8000.0  # Its weights would read other mels, silently: refused.
  with pytest.raises(ConfigError, match=r"init_from=.*: it was trained on other mel settings .*\(fmax: trained on 11"):
    weights.load_pretrained(model, config)


def muscall_crop(wave):
  """The original's evaluation input (AudioCaptionDataset._crop_audio, get_audio): the central
  CROP_SECONDS of the samples, (len - n) // 2 in, or the file zero-padded to that length."""
  n = int(SR * CROP_SECONDS)
  if len(wave) > n:
    start = (len(wave) - n) // 2
    return wave[start : start + n]
  return np.concatenate([wave, np.zeros(n - len(wave), wave.dtype)])


def changing(seconds, seed):
  """Noise in bands and loudness that change every 0.1 s: any shift of the crop shows."""
  rng = np.random.default_rng(seed)
  blocks = rng.uniform(0.05, 1.0, int(seconds * 10) + 1)
  t = np.arange(int(seconds * SR)) / SR
  wave = np.sin(2 * np.pi * (200 + 3000 * blocks[(t * 10).astype(int)]) * t) + 0.3 * rng.standard_normal(t.size)
  return (wave * blocks[(t * 10).astype(int)]).astype(np.float32)


@pytest.mark.slow
def test_imported_models_crop_the_waveform_like_the_original(imported):
  """A file longer than the crop (the original takes the central samples, then their mel) and one
  shorter (zero-padded samples): the imported model embeds both as the original does."""
  state, _, bundle = imported
  model = mclap.load(bundle, batch_size=2)
  assert model.crop == "waveform"
  waves = [changing(CROP_SECONDS * 1.5 + 0.01, 1), changing(CROP_SECONDS * 0.4, 2)]
  expected = normalized(muscall_audio(state, [muscall_crop(w) for w in waves]))
  np.testing.assert_allclose(model.embed_audio(waves), expected, atol=2e-4)
  cropped_mel = model.embed_audio(waves, crop="mel")  # mclap's own rule: another input.
  assert np.abs(cropped_mel - expected).max() > 1e-2


def test_every_parameter_lands_in_its_place(imported):
  state, _, bundle = imported
  state = {k: v.astype(np.float32) for k, v in state.items()}
  variables, unused = import_muscall.muscall_variables(state, import_muscall.muscall_config(state))
  assert all(k.startswith(("audio_backbone.spec.", "textual_head.ln_final.", "audio_ssl.")) or
             k.endswith("num_batches_tracked") for k in unused)  # fmt: skip
  imported_size = sum(v.size for v in _leaves(variables))
  qkv_biases = 3 * TEXT_WIDTH * TEXT_LAYERS  # Zeros: MusCALL's text attention has no biases.
  assert imported_size == sum(state[k].size for k in state if k not in unused) + qkv_biases
  text, audio = variables["text"], variables["audio"]
  w = TEXT_WIDTH
  qkv = state["textual_head.transformer.layers.2.0.fn.to_qkv.weight"]
  np.testing.assert_array_equal(text["blocks"][2]["attention"]["k_proj"]["kernel"], qkv[w : 2 * w].T)
  np.testing.assert_array_equal(
    audio["blocks"][3]["downsample"]["conv"]["kernel"],
    state["audio_backbone.layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
    audio["blocks"][13]["conv2"]["bn"]["var"], state["audio_backbone.layer4.0.bn2.running_var"]
  )
  np.testing.assert_array_equal(text["ln_final"]["scale"], state["textual_head.transformer.norm_out.weight"])


def _leaves(tree):
  for v in tree.values():
    yield from (_leaves(v) if isinstance(v, dict) else [np.asarray(v)])


def test_import_errors_say_what_is_wrong(imported, tmp_path):
  state, clip_dir, _ = imported
  np.savez(tmp_path / "wrong_crop.npz", **state)
  with pytest.raises(UserError, match=r"\(the audio length: it was trained on 20 s crops\)$"):
    import_muscall.import_muscall(tmp_path / "wrong_crop.npz", clip_dir, tmp_path / "b1", crop_seconds=10.0)
  extra = dict(state, **{"audio_backbone.extra_head.weight": np.zeros(3)})
  np.savez(tmp_path / "extra.npz", **extra)
  with pytest.raises(UserError, match="no place in the model"):
    import_muscall.import_muscall(tmp_path / "extra.npz", clip_dir, tmp_path / "b2")
  for name, fb in (("fmax", htk_filterbank(np.float32, fmax=11000.0)), ("slaney", htk_filterbank(np.float32) / 50)):
    np.savez(tmp_path / f"{name}.npz", **dict(state, **{"audio_backbone.spec.mel_scale.fb": fb}))
    with pytest.raises(UserError, match="other mel settings"):
      import_muscall.import_muscall(tmp_path / f"{name}.npz", clip_dir, tmp_path / "b4")
  vocab = json.loads((clip_dir / "vocab.json").read_text())
  end, start = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
  vocab.update({"<|endoftext|>": start, "<|startoftext|>": end})  # Texts end below the highest id.
  (tmp_path / "reordered").mkdir()
  (tmp_path / "reordered" / "vocab.json").write_text(json.dumps(vocab))
  (tmp_path / "reordered" / "merges.txt").write_text((clip_dir / "merges.txt").read_text())
  with pytest.raises(UserError, match="does not end texts with its highest id"):
    import_muscall.import_muscall(tmp_path / "wrong_crop.npz", tmp_path / "reordered", tmp_path / "b5")
  (tmp_path / "empty_tokenizer").mkdir()
  with pytest.raises(UserError, match="vocab.json \\+ merges.txt"):
    import_muscall.import_muscall(tmp_path / "wrong_crop.npz", tmp_path / "empty_tokenizer", tmp_path / "b3")
  assert not any(p.name.startswith(("b1", "b2", "b3", "b4", "b5", ".b")) for p in tmp_path.iterdir())


@pytest.mark.slow
def test_the_audio_length_a_muscall_was_trained_on_is_read_from_its_attention_pool(imported, tmp_path):
  """MusCALL's `audio_len_seconds` sizes its attention pool's positional embedding (AttentionPool2d
  of (n_mels // 32) * (((seconds * sr) // (n_fft // 2) + 1) // 32) + 1 positions, from its code):
  a checkpoint trained on other crops than 20 s imports without being told."""
  state, clip_dir, _ = imported
  mel = mel_lib.complete(mel_lib.muscall_torchaudio_config().to_dict())
  pool = "audio_backbone.attnpool.positional_embedding"
  for seconds in (1, 3, 5, 10, 20, 30, 46, 60):  # Not 2 s or 45 s: the original's pool is sized wrong there.
    cells = (128 // 32) * ((seconds * 16000 // 512 + 1) // 32)
    assert import_muscall.fitting_seconds({pool: np.zeros((cells + 1, 8))}, mel) == [seconds]
  np.savez(tmp_path / "odd.npz", **dict(state, **{pool: np.zeros((8, 512), np.float32)}))
  with pytest.raises(UserError, match=r"attention pool has 7 positions, which no crop of 1-600 s gives: pass --crop"):
    import_muscall.import_muscall(tmp_path / "odd.npz", clip_dir, tmp_path / "odd")
  rng = np.random.default_rng(3)
  state = dict(state, **{pool: (rng.standard_normal((37, 512)) / np.sqrt(512)).astype(np.float32)})  # 10 s.
  np.savez(tmp_path / "ten.npz", **state)
  model = mclap.load(import_muscall.import_muscall(tmp_path / "ten.npz", clip_dir, tmp_path / "bundle"))
  assert model.config.data.crop_seconds == 10.0
  wave = tone(10.0, SR, freq=440.0).astype(np.float32)
  np.testing.assert_allclose(model.embed_audio([wave]), normalized(muscall_audio(state, [wave])), atol=2e-4)


def test_a_new_model_starts_its_audio_tower_from_an_imported_muscall(imported):
  """Seth's generator over MusCALL's released audio tower: `model.audio.init_from` names the
  imported bundle, and the `torchaudio` variant gives the mels that tower reads."""
  _, _, bundle_dir = imported
  config = cli.load_config("configs/generator.py:torchaudio")
  config.model.audio.init_from = str(bundle_dir)
  model = build_model(spec_from_config(config), nnx.Rngs(0))
  weights.load_pretrained(model, config)
  saved = weights.flat_leaves(weights.read_arrays(bundle_dir / bundle.VARIABLES_DIR)["audio"])
  loaded = weights.flat_leaves(nnx.state(model.audio))
  assert loaded.keys() == saved.keys()
  for name, value in loaded.items():
    np.testing.assert_array_equal(value, saved[name])
  config = cli.load_config("configs/generator.py")  # mclap's own mels: refused, by the settings that differ.
  config.model.audio.init_from = str(bundle_dir)
  message = r"trained on other mel settings than config.data.mel \(fmax: trained on 11025.*: add the torchaudio variant"
  with pytest.raises(ConfigError, match=message):
    weights.load_pretrained(build_model(spec_from_config(config), nnx.Rngs(0)), config)


def test_clips_tokenizer_from_a_hub_cache_folder(imported, tmp_path):
  """`--tokenizer_dir ~/.cache/huggingface/hub/models--openai--clip-vit-base-patch32`: the snapshot."""
  _, clip_dir, _ = imported
  (tmp_path / "scratch").mkdir()
  found = import_muscall.clip_tokenizer_dir(hub_cache(clip_dir, tmp_path / "hub"), tmp_path / "scratch")
  assert (found / "tokenizer.json").is_file()


def test_a_filterbank_torchaudio_computed_in_float32_is_accepted(imported):
  """torchaudio saves its filters computed in float32; some entries differ from exact ones by more
  than 1e-5 (genuine checkpoints were refused for it); the fixture's checkpoint carries such filters."""
  float32 = htk_filterbank(np.float32)
  assert not np.allclose(float32, htk_filterbank(), atol=1e-5)
  config = mclap.serve.bundle.read_meta(imported[2])["config"]
  import_muscall.check_filterbank({"audio_backbone.spec.mel_scale.fb": float32}, config)


def test_torch_written_checkpoint_imports_like_the_npz(imported, tmp_path):
  torch = pytest.importorskip("torch")  # Optional: torch is not a dependency of mclap.
  state, clip_dir, bundle = imported
  tensors = {k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()}
  buffer = io.BytesIO()
  torch.save({"epoch": 1, "state_dict": tensors}, buffer)
  (tmp_path / "best_model.pth.tar").write_bytes(buffer.getvalue())
  again = import_muscall.import_muscall(tmp_path / "best_model.pth.tar", clip_dir, tmp_path / "bundle")
  a, b = mclap.serve.bundle.read(bundle)[1], mclap.serve.bundle.read(again)[1]
  np.testing.assert_array_equal(a.audio.pool.positional_embedding[...], b.audio.pool.positional_embedding[...])


@pytest.mark.slow
def test_mclap_eval_evaluates_an_imported_model_as_the_original_embeds(imported, tmp_path):
  """`mclap.eval --bundle` on an imported checkpoint, on files longer and shorter than the crop
  prepared with `--waveform_crop_seconds` (the central samples the original evaluates, or the
  zero-padded file): every clip and caption is embedded as the original's forward pass embeds
  them, and retrieval ranks as those embeddings rank."""
  state, _, bundle = imported
  audio_dir, corpus = tmp_path / "audio", tmp_path / "corpus"
  audio_dir.mkdir()
  lengths = (CROP_SECONDS * 1.5 + 0.01, CROP_SECONDS * 0.4, CROP_SECONDS, CROP_SECONDS * 1.2 + 0.3)
  waves = [changing(seconds, seed) for seed, seconds in enumerate(lengths)]
  captions = ["calm piano", "loud drums and bass", "a violin solo", "choir, reverb"]
  for n, wave in enumerate(waves):
    soundfile.write(audio_dir / f"{n}.wav", wave, SR, subtype="FLOAT")
  rows = "".join(f'audio/{n}.wav,"{caption}",test\n' for n, caption in enumerate(captions))
  (tmp_path / "metadata.csv").write_text("path,caption,split\n" + rows)
  prepare = [sys.executable, "-m", "mclap.prepare", "--source", "folder", "--input", tmp_path, "--output", corpus]
  prepare += ["--mel_preset", "muscall_torchaudio", "--waveform_crop_seconds", CROP_SECONDS, "--num_workers", "0"]
  subprocess.run(list(map(str, prepare)), cwd=ROOT, check=True, capture_output=True)
  config = cli.load_config(str(ROOT / "configs/muscall.py"))
  config.data.update(dir=str(corpus), eval_batch_size=8)
  results = eval_lib.evaluate(config, bundle=bundle, names=["retrieval"], output=tmp_path / "eval")
  assert results["retrieval"]["num_items"] == 4 and (tmp_path / "eval/report.md").is_file()

  config = eval_lib.with_bundle_data(config, bundle)
  found = eval_lib.make_context(config, eval_lib.load(config, bundle=bundle)[0]).embeddings("test")
  reader = records.CorpusReader(corpus, "test")
  order = [int(reader[i]["id"].rsplit("/", 1)[-1].split(".")[0]) for i in range(len(reader))]
  expected_audio = normalized(muscall_audio(state, [muscall_crop(waves[n]) for n in order]))
  np.testing.assert_allclose(found["audio"], expected_audio, atol=2e-4)
  tokens, mask = mclap.load(bundle).tokenizer([captions[n] for n in order])
  expected_text = normalized(muscall_text(state, np.where(mask == 1, tokens, 0)))
  np.testing.assert_allclose(found["text"], expected_text, atol=2e-4)
  expected = metrics.text_audio_retrieval(expected_audio, expected_text)
  assert results["retrieval"]["text_to_audio"]["R@1"] == expected["text_to_audio"]["R@1"]


def test_corpora_cut_to_another_length_are_refused_and_whole_files_warned_of(imported, tmp_path, capsys):
  _, _, bundle = imported
  config = cli.load_config(str(ROOT / "configs/muscall.py"))
  config.data.dir = str(tmp_path)
  config = eval_lib.with_bundle_data(config, bundle)
  assert config.data.crop == "waveform"
  info = {"mel": config.data.mel.to_dict(), "splits": {"test": {}}}
  (tmp_path / records.INFO_FILE).write_text(json.dumps(info))
  evaluation.select(config, ["retrieval"])
  assert "--waveform_crop_seconds 20" in capsys.readouterr().out
  (tmp_path / records.INFO_FILE).write_text(json.dumps({**info, "waveform_crop_seconds": 10.0}))
  with pytest.raises(records.CorpusError, match="central 10 s of each file.*--waveform_crop_seconds 20$"):
    evaluation.select(config, ["retrieval"])
