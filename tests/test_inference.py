"""Using a trained model: export bundles, the `mclap.load` API, embedding a folder and searching it."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile
from conftest import ROOT, USES_TRAINED_DEMO, tone

import mclap
from mclap import cli, embed, evaluation, export, parallel, search
from mclap import eval as eval_lib
from mclap.data import mel as mel_lib
from mclap.data import pipeline, records
from mclap.errors import ConfigError, UserError
from mclap.models import spec_from_config, weights
from mclap.models.embedder import Embedder
from mclap.prepare import decode
from mclap.prepare.listing import AudioItem
from mclap.serve import bundle
from mclap.serve import index as index_lib
from mclap.training import checkpoints

pytestmark = USES_TRAINED_DEMO  # Most tests read the shared trained workdir.


def run(module, *args):
  """(stdout, stderr) of `python -m module args`, which must succeed."""
  result = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  return result.stdout, result.stderr


@pytest.fixture(scope="module")
def trained(trained_demo, tmp_path_factory):
  """(config, workdir, bundle exported by the CLI) of the shared 4-step run on the tiny corpus."""
  config, workdir = trained_demo
  out = tmp_path_factory.mktemp("bundles") / "float32"
  run("mclap.export", "--workdir", workdir, "--output", out)
  return config, workdir, out


@pytest.fixture(scope="module")
def model(trained):
  return mclap.load(trained[2], batch_size=4)


def test_a_bundle_evaluates_and_embeds_as_its_workdir_checkpoint(trained, model, tmp_path, capsys):
  config, workdir, bundle_dir = trained
  names = ["retrieval", "zero_shot"]
  from_workdir = eval_lib.evaluate(config, workdir, names=names, output=tmp_path / "w")
  assert re.search(rf"embed {config.data.dir} test: 100%.* (\d+)/\1 ", capsys.readouterr().err)  # Progress shows.
  from_bundle = eval_lib.evaluate(config, bundle=bundle_dir, names=names, output=tmp_path / "b")
  # Without --config, a workdir is evaluated with its own (mclap.eval --workdir W used to fail with
  # a traceback); a bundle, which holds no corpus, asks for one.
  assert eval_lib.evaluate(None, workdir, names=names, output=tmp_path / "own") == from_workdir
  with pytest.raises(UserError, match="evaluating a bundle needs --config FILE for the corpora and evaluators"):
    eval_lib.evaluate(None, bundle=bundle_dir, names=names)
  for name in names:
    del from_workdir[name]["step"]
    assert from_bundle[name] == from_workdir[name]  # The same variables through the same embedder.
  assert "bundle (" in (tmp_path / "b/report.md").read_text()
  model_of_checkpoint = weights.read_model(workdir)[0]
  embedder, state = Embedder.for_model(model_of_checkpoint, parallel.make_mesh(config.mesh), 8)
  expected = evaluation.EvalContext(config, embedder, state).embeddings("test")
  reader = records.CorpusReader(config.data.dir, "test")
  floor = mel_lib.floor_db(config.data.mel)
  mels = [pipeline.eval_crops(reader[i]["mel"], model.crop_frames, 1, floor)[0] for i in range(len(reader))]
  np.testing.assert_allclose(model.embed_mels(mels), expected["audio"], atol=2e-5)
  captions = [reader[i]["captions"][0] for i in range(len(reader))]
  np.testing.assert_allclose(model.embed_text(captions), expected["text"], atol=2e-5)


def test_a_workdirs_config_json_is_a_config_file_that_takes_overrides(trained):
  """`--config W/config.json`: a run resumed or evaluated with its own config and a change; its
  sequences are tuples again, so that `--config.key='(a, b)'` overrides them."""
  config, workdir, _ = trained
  own = workdir / "config.json"
  assert cli.load_config(str(own)).to_dict() == config.to_dict()
  command = [sys.executable, "-m", "mclap.eval", "--workdir", workdir, "--config", own, "--evals", "nope"]
  command += ["--config.evals.tagging.prompts=('label',)", "--config.data.eval_batch_size=4"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)  # Parsed; stops at the evaluator.
  assert result.stderr.strip().splitlines()[-1].startswith("error: unknown evaluator(s) ['nope']"), result.stderr
  with pytest.raises(ConfigError, match=re.escape(f"without --config=FILE: to change {workdir}'s own config, pass")):
    cli.check_config_args(["eval", "--workdir", str(workdir), "--config.data.eval_batch_size=4"])


def test_a_damaged_bundle_is_named_in_one_line(trained, tmp_path):
  """A copy cut short: TensorStore's error spans dozens of lines (its whole spec), and Orbax's reads
  left in flight printed dozens of tracebacks more; the job says one line and nothing else."""
  copy = tmp_path / "copy"
  shutil.copytree(trained[2], copy)
  biggest = max((p for p in (copy / "variables").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  os.truncate(biggest, biggest.stat().st_size // 2)
  command = [sys.executable, "-m", "mclap.embed", "--bundle", copy, "--audio_dir", tmp_path, "--output", tmp_path / "i"]
  result = subprocess.run(list(map(str, command)), cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
  assert result.stderr.startswith(f"error: cannot read the variables of {copy} (") and "TensorStore details" not in (
    result.stderr
  )
  assert result.stderr.endswith("; export or import it again\n")


def test_a_config_whose_crops_or_tokens_do_not_fit_the_checkpoint_stops_before_the_model(trained, monkeypatch):
  config, workdir, _ = trained
  monkeypatch.setattr(weights, "build_model", None)  # Building the model would fail the test.
  longer = ml_collections.ConfigDict(config.to_dict())
  longer.data.max_tokens = config.data.max_tokens + 8
  with pytest.raises(ConfigError, match=r"reads up to 32 tokens of a 30522-token vocabulary, the config gives 40 of"):
    eval_lib.evaluate(longer, workdir, names=["retrieval"])
  other_crops = ml_collections.ConfigDict(config.to_dict())
  other_crops.data.crop_seconds = 1.0
  with pytest.raises(ConfigError, match=r"takes 32-mel crops of \d+ frames, the config gives 32 mels"):
    eval_lib.evaluate(other_crops, workdir, names=["retrieval"])


def test_a_checkpoint_is_rebuilt_from_its_own_spec(trained, tmp_path):
  """The model spec saved with a checkpoint rebuilds its model, whatever config.json says later."""
  config, workdir, _ = trained
  copy = tmp_path / "workdir"
  shutil.copytree(workdir, copy)
  edited = json.loads((copy / "config.json").read_text())
  edited["model"]["text"]["width"] *= 2
  (copy / "config.json").write_text(json.dumps(edited))
  model, spec, _, step = weights.read_model(copy)
  assert spec == spec_from_config(config) and step == 4 and model.text.output_dim == config.model.text.width


def test_a_workdir_of_mclap_0_1_still_evaluates_and_exports(trained, model, tmp_path):
  """0.1 kept the model's variables at the top of the train state's groups (and no spec)."""
  config, workdir, _ = trained
  saved = weights.saved_state(workdir / "checkpoints", 4)
  old = {group: saved[group]["model"] for group in ("params", "batch_stats")}
  mgr = checkpoints.manager(tmp_path / "old/checkpoints", None)
  checkpoints.save(mgr, 4, {**old, "step": saved["step"]})
  checkpoints.close(mgr)
  shutil.copy(workdir / "config.json", tmp_path / "old/config.json")
  export.export(tmp_path / "old", tmp_path / "bundle")
  texts = ["calm piano", "loud drums"]
  np.testing.assert_array_equal(
    mclap.load(tmp_path / "bundle", batch_size=4).embed_text(texts), model.embed_text(texts)
  )


def test_a_version_1_bundle_still_loads(trained, model, tmp_path):
  """Bundles written before the model spec was stored described the model by a training config."""
  config, _, bundle_dir = trained
  old = tmp_path / "v1"
  shutil.copytree(bundle_dir, old)
  meta = json.loads((old / "bundle.json").read_text())
  model_section = config.model.to_dict()
  model_section["audio"]["init_from"] = ""
  meta["config"].update(model=model_section, loss={"name": "infonce"}, train={"dtype": "float32", "remat": "none"})
  meta.update(version=1)
  del meta["spec"]
  (old / "bundle.json").write_text(json.dumps(meta, default=list))
  texts = ["calm piano", "loud drums"]
  np.testing.assert_array_equal(mclap.load(old, batch_size=4).embed_text(texts), model.embed_text(texts))


def test_audio_is_decoded_and_turned_into_a_mel_as_prepare_does(model, tmp_path):
  path = tmp_path / "stereo 44k.flac"
  soundfile.write(path, tone(3.0, 44100, channels=2, freq=523.0), 44100)
  settings = decode.DecodeSettings(tuple(sorted(model.mel_config.items())), 600.0, 1.0, 16000)
  record = decode.decode_record(AudioItem(id="x", path=str(path)), settings)
  np.testing.assert_allclose(mel_lib.log_mel(model.waveform(path), model.mel_config), record["mel"], atol=1e-5)
  from_record = model.embed_mels([pipeline.eval_crops(record["mel"], model.crop_frames, 1, -100.0)[0]])
  np.testing.assert_allclose(model.embed_audio([path]), from_record, atol=1e-5)
  # A waveform at another rate is resampled like a file.
  np.testing.assert_allclose(model.embed_audio([(tone(3.0, 16000), 16000)]), model.embed_audio([tone(3.0, 16000)]))


def test_crop_averaging_and_zero_shot_scores(model):
  waves = [tone(6.0, 16000, freq=f) for f in (220.0, 880.0)]
  three = model.embed_audio(waves, crops=3)
  crops = [model.mel_crops(w.astype(np.float32), 3) for w in waves]
  assert crops[0].shape[0] == 3
  singles = [model.embed_mels([c[i : i + 1] for i in range(3)]) for c in crops]
  mean = np.stack([s.mean(axis=0) for s in singles])
  np.testing.assert_allclose(three, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
  labels = ["piano", "organ", "synth pad"]
  probs = model.zero_shot(waves, labels, prompt="A {} track")
  logits = model.logit_scale * model.embed_audio(waves) @ model.embed_text([f"A {x} track" for x in labels]).T
  expected = np.exp(logits - logits.max(axis=1, keepdims=True))
  np.testing.assert_allclose(probs, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)


def test_export_averages_the_last_checkpoints(trained, tmp_path):
  """`--average_last 2` of the shared run (checkpoints at steps 2 and 4): every variable, batch
  statistics included, is the NumPy mean of the two checkpoints' models."""
  _, workdir, _ = trained
  out = export.export(workdir, tmp_path / "mean", average_last=2)
  assert bundle.read_meta(out)["source"]["averaged_steps"] == [2, 4]
  first, last = (bundle.variables_of(weights.read_model(workdir, step)[0]) for step in (2, 4))
  mean = lambda ours, a, b: np.testing.assert_allclose(ours, (np.float64(a) + b) / 2, rtol=1e-6, atol=1e-7)  # noqa: E731
  jax.tree.map(mean, bundle.variables_of(bundle.read(out)[1]), first, last)
  with pytest.raises(UserError, match="holds 2 checkpoint"):
    export.export(workdir, tmp_path / "three", average_last=3)


def test_bundle_is_self_contained_and_bfloat16_halves_it(trained, model, tmp_path):
  _, workdir, out = trained
  copy = tmp_path / "moved"
  shutil.copytree(out, copy)
  moved = mclap.load(copy, batch_size=4)
  assert moved.config.data.tokenizer_dir.startswith(str(copy))
  np.testing.assert_array_equal(moved.embed_text(["calm piano"]), model.embed_text(["calm piano"]))
  half = export.export(workdir, tmp_path / "bf16", dtype="bf16")
  saved = ocp.StandardCheckpointHandler().metadata((half / bundle.VARIABLES_DIR).absolute())
  assert saved["text"]["token_embedding"]["embedding"].dtype == jax.numpy.bfloat16
  assert saved["audio"]["stem"]["0"]["bn"]["mean"].dtype == np.float32
  size = lambda d: sum(p.stat().st_size for p in (d / bundle.VARIABLES_DIR).rglob("*") if p.is_file())  # noqa: E731
  assert size(half) < 0.6 * size(out)
  waves = [tone(3.0, 16000, freq=f) for f in (220.0, 440.0, 880.0)]
  cosines = np.sum(mclap.load(half, batch_size=4).embed_audio(waves) * model.embed_audio(waves), axis=1)
  assert cosines.min() > 0.99


def test_bad_bundles_and_inputs_fail_in_one_line(model, tmp_path, capsys):
  with pytest.raises(UserError, match="is not an mclap bundle"):
    mclap.load(tmp_path)
  with pytest.raises(UserError, match="missing file"):
    model.embed_audio([tmp_path / "nowhere.wav"])
  good = tone(3.0, 16000)
  embeddings, skipped = model.embed_audio([tmp_path / "nowhere.wav", good, np.zeros(16000)], errors="skip")
  assert list(skipped) == [0, 2] and skipped[0].startswith("missing file") and skipped[2].startswith("silent")
  np.testing.assert_allclose(embeddings, model.embed_audio([good]), atol=1e-6)
  with pytest.raises(UserError, match="list of texts"):
    model.embed_text("calm piano")
  # One input where a list goes was taken apart: a path into characters, a waveform into samples.
  wrap = r"takes a list of audio files or waveforms; wrap a single one: "
  for call, message in [
    (lambda: model.embed_audio(str(tmp_path / "a.wav")), wrap + r"embed_audio\(\[x\]\)"),
    (lambda: model.embed_audio(good), wrap + r"embed_audio\(\[x\]\)"),
    (lambda: model.embed_audio((good, 16000)), wrap + r"embed_audio\(\[x\]\)"),
    (lambda: model.zero_shot(tmp_path / "a.wav", ["piano", "organ"]), wrap + r"zero_shot\(\[x\], labels\)"),
    (lambda: model.zero_shot([good], "piano"), r"zero_shot takes a list of labels: \['piano'\]"),
    (lambda: model.zero_shot([good], []), r"zero_shot needs labels to choose from"),
    (lambda: model.embed_audio([np.stack([good, good])]), r"shape \[2, 48000\]: mix its channels to one"),
  ]:
    with pytest.raises(UserError, match=message):
      call()
  with pytest.raises(UserError, match="exists"):
    export.export(tmp_path, model.directory)
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes/readme.txt").write_text("")
  (tmp_path / "itunes").mkdir()  # A library of AAC and WMA files: nothing libsndfile decodes.
  for name in ("a.m4a", "b.M4A", "c.wma"):
    (tmp_path / "itunes" / name).write_bytes(b"\0\0\0\x20ftypM4A ")
  for folder, message in [
    ("notes", r"no files ending in .wav, .flac, .* under .*notes; --audio_dir must name a folder of them"),
    ("itunes", r"under .*itunes \(it holds 2 .m4a, 1 .wma, which libsndfile does not decode: convert to FLAC"),
    ("note", rf"note does not exist; did you mean --audio_dir {tmp_path / 'notes'}\?"),
  ]:
    with pytest.raises(UserError, match=message):
      embed.embed_folder(model.directory, tmp_path / folder, tmp_path / "index", model=model, show_progress=False)
  assert not (tmp_path / "index").exists()  # Refused before anything is written.
  soundfile.write(tmp_path / "itunes/d.wav", good, 16000)  # Beside files it can read, they are named, not lost.
  capsys.readouterr()
  assert embed.list_audio(tmp_path / "itunes") == ["d.wav"]
  assert "warning: left out 2 .m4a, 1 .wma files under" in capsys.readouterr().err
  soundfile.write(tmp_path / "itunes/a.flac", good, 16000)  # Converted as told: a.m4a is no longer left out.
  assert embed.list_audio(tmp_path / "itunes") == ["a.flac", "d.wav"]
  assert "warning: left out 1 .m4a, 1 .wma files under" in capsys.readouterr().err


@pytest.fixture(scope="module")
def music(tmp_path_factory):
  folder = tmp_path_factory.mktemp("music")
  (folder / "jazz").mkdir()
  soundfile.write(folder / "a.wav", tone(3.0, 22050, freq=220.0), 22050)
  soundfile.write(folder / "jazz" / "b.flac", tone(4.0, 44100, channels=2, freq=660.0), 44100)
  np.save(folder / "c.npy", tone(2.5, 16000, freq=1320.0).astype(np.float32))
  (folder / "broken.mp3").write_bytes(b"not audio at all")
  soundfile.write(folder / "silent.wav", np.zeros(16000), 16000)
  (folder / "notes.txt").write_text("not an audio extension: ignored")
  return folder


def test_embed_cli_indexes_a_folder_skipping_bad_files(trained, model, music, tmp_path):
  out, err = run(
    "mclap.embed", "--bundle", trained[2], "--audio_dir", music, "--output", tmp_path / "index", "--part_size", 2
  )
  assert "rejected 2 new" in out
  # libmpg123's complaint about broken.mp3 goes to the index's log, not over the progress bar.
  assert "Illegal Audio-MPEG-Header" in (tmp_path / "index/decoder.log").read_text()
  assert "Illegal Audio-MPEG-Header" not in err and "5/5" in err  # The bar itself still shows.
  index = index_lib.Index(tmp_path / "index")
  assert [i["path"] for i in index.items] == ["a.wav", "c.npy", "jazz/b.flac"]
  assert [i["seconds"] for i in index.items] == [3.0, 2.5, 4.0]
  np.testing.assert_allclose(index.embeddings, model.embed_audio([music / i["path"] for i in index.items]), atol=1e-5)
  assert set(index_lib.read_rejects(tmp_path / "index")) == {"broken.mp3", "silent.wav"}
  assert "silent" in index_lib.read_rejects(tmp_path / "index")["silent.wav"]["reason"]


def test_embed_resumes_after_an_interruption_and_adds_new_files(trained, model, music, tmp_path, monkeypatch):
  folder = tmp_path / "music"
  shutil.copytree(music, folder)
  calls = []
  original = mclap.serve.inference.Model.embed_mels

  def interrupted_after_one_part(self, mels):
    calls.append(len(mels))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return original(self, mels)

  monkeypatch.setattr(mclap.serve.inference.Model, "embed_mels", interrupted_after_one_part)
  with pytest.raises(SystemExit, match="Run the same command to resume"):
    embed.embed_folder(trained[2], folder, tmp_path / "index", part_size=1, show_progress=False)
  monkeypatch.undo()
  assert len(index_lib.read_parts(tmp_path / "index")[1]) == 1 and not (tmp_path / "index" / "index.json").exists()
  info = embed.embed_folder(trained[2], folder, tmp_path / "index", part_size=1, show_progress=False)
  assert info["count"] == 3
  soundfile.write(folder / "d.wav", tone(3.0, 16000, freq=990.0), 16000)
  embed.embed_folder(trained[2], folder, tmp_path / "index", part_size=1, show_progress=False)
  index = index_lib.Index(tmp_path / "index")
  assert [i["path"] for i in index.items] == ["a.wav", "c.npy", "jazz/b.flac", "d.wav"]
  np.testing.assert_allclose(index.embeddings, model.embed_audio([folder / i["path"] for i in index.items]), atol=1e-5)
  assert sorted(p.name for p in (tmp_path / "index").iterdir()) == sorted(
    ["index.json", info_data(tmp_path), "rejects.jsonl", "decoder.log"]
  )


def test_a_re_run_follows_the_folder_changed_removed_and_mended_files(trained, model, music, tmp_path):
  folder = tmp_path / "music"
  shutil.copytree(music, folder)
  embed.embed_folder(trained[2], folder, tmp_path / "index", show_progress=False, model=model)
  soundfile.write(folder / "a.wav", tone(2.0, 16000, freq=1760.0), 16000)  # Replaced by another take.
  (folder / "c.npy").unlink()  # Deleted.
  soundfile.write(folder / "silent.wav", tone(2.0, 16000, freq=500.0), 16000)  # Rejected, then mended.
  info = embed.embed_folder(trained[2], folder, tmp_path / "index", show_progress=False, model=model)
  index = index_lib.Index(tmp_path / "index")
  files = [i["path"] for i in index.items]
  assert sorted(files) == ["a.wav", "jazz/b.flac", "silent.wav"] and info["count"] == 3
  assert {i["path"]: i["seconds"] for i in index.items}["a.wav"] == 2.0
  np.testing.assert_allclose(index.embeddings, model.embed_audio([folder / p for p in files]), atol=1e-5)
  assert list(index_lib.read_rejects(tmp_path / "index")) == ["broken.mp3"]
  # Nothing changed since: nothing to embed again, nothing lost.
  again = embed.embed_folder(trained[2], folder, tmp_path / "index", show_progress=False, model=model)
  assert again["count"] == 3 and [i["path"] for i in index_lib.Index(tmp_path / "index").items] == files
  # An embedded file replaced by a broken one: its old row goes, its reject stays, and stays done.
  (folder / "jazz" / "b.flac").write_bytes(b"fLaC but cut off")
  for _ in range(2):
    info = embed.embed_folder(trained[2], folder, tmp_path / "index", show_progress=False, model=model)
    assert [i["path"] for i in index_lib.Index(tmp_path / "index").items] == ["a.wav", "silent.wav"]
    assert sorted(index_lib.read_rejects(tmp_path / "index")) == ["broken.mp3", "jazz/b.flac"]


def test_a_moved_music_folder_keeps_its_index(trained, model, music, tmp_path, capsys):
  folder = tmp_path / "music"
  shutil.copytree(music, folder, copy_function=shutil.copy2)
  embed.embed_folder(trained[2], folder, tmp_path / "index", show_progress=False, model=model)
  rows = index_lib.Index(tmp_path / "index").embeddings.copy()
  shutil.copytree(folder, tmp_path / "elsewhere", copy_function=shutil.copy2)  # Another folder with the same files.
  with pytest.raises(UserError, match=r"was built with audio_dir .*music'?, not .*elsewhere"):
    embed.embed_folder(trained[2], tmp_path / "elsewhere", tmp_path / "index", show_progress=False, model=model)
  shutil.rmtree(tmp_path / "elsewhere")
  folder.rename(tmp_path / "library")  # Moved: the old folder is gone, its files are all here.
  capsys.readouterr()
  info = embed.embed_folder(trained[2], tmp_path / "library", tmp_path / "index", show_progress=False, model=model)
  out = capsys.readouterr().out
  assert "music is gone and" in out and "library holds its files: the index follows them there" in out
  assert "0 to embed" in out and info["audio_dir"] == str(tmp_path / "library")
  np.testing.assert_array_equal(index_lib.Index(tmp_path / "index").embeddings, rows)
  (like,) = search.search(tmp_path / "index", [], like=[str(tmp_path / "library/a.wav")], model=model)
  assert "a.wav" not in [r["path"] for r in like["results"]]  # The query file is known in its new place.


def test_a_run_stopped_before_its_first_validation_says_it_has_no_best_checkpoint(trained, tmp_path):
  """`--best` of a run killed before validation kept a best checkpoint was told to train first."""
  run = tmp_path / "run"
  shutil.copytree(trained[1], run, ignore=shutil.ignore_patterns("best", "best.json", "eval"))
  with pytest.raises(
    ConfigError, match=r"run has no best checkpoint yet .*; leave out --best for its latest \(step 4\)$"
  ):
    weights.read_model(run, best=True)


def test_an_index_names_the_bundle_it_was_built_with(trained, model, music, tmp_path):
  """A model trained on and exported again (to the same folder, or another) cannot extend an index
  of the one before: the refusal named two ids and no bundle, and not how to rebuild the index."""
  embed.embed_folder(trained[2], music, tmp_path / "index", show_progress=False, model=model)
  again = tmp_path / "again"
  shutil.copytree(trained[2], again)
  meta = json.loads((again / bundle.BUNDLE_FILE).read_text())
  (again / bundle.BUNDLE_FILE).write_text(json.dumps({**meta, "id": "0" * 32}))  # As an export writes it.
  with pytest.raises(
    UserError, match=rf"built with the bundle {trained[2]} \(id \w+\), not {again} \(id 0+\); .*or delete"
  ):
    embed.embed_folder(again, music, tmp_path / "index", show_progress=False, model=mclap.load(again))
  index_json = json.loads((tmp_path / "index/index.json").read_text())
  (tmp_path / "index/index.json").write_text(json.dumps({**index_json, "bundle": str(again)}))
  with pytest.raises(UserError, match=rf"bundle {again} \(id \w+\), not the one exported there since \(id 0+\)"):
    embed.embed_folder(again, music, tmp_path / "index", show_progress=False, model=mclap.load(again))


def info_data(tmp_path):
  return json.loads((tmp_path / "index" / "index.json").read_text())["data"]


def test_search_ranks_by_cosine_and_leaves_the_query_file_out(trained, model, music, tmp_path):
  embed.embed_folder(trained[2], music, tmp_path / "index", show_progress=False)
  index = index_lib.Index(tmp_path / "index")
  query = "calm piano with strings"
  (text, like) = search.search(tmp_path / "index", [query], like=[str(music / "a.wav")], top_k=2, model=model)
  scores = np.asarray(index.embeddings) @ model.embed_text([query])[0]
  order = np.argsort(-scores, kind="stable")[:2]
  assert [r["path"] for r in text["results"]] == [index.items[i]["path"] for i in order]
  np.testing.assert_allclose([r["score"] for r in text["results"]], scores[order], atol=1e-4)
  assert "a.wav" not in [r["path"] for r in like["results"]] and len(like["results"]) == 2
  assert [r["file"] for r in text["results"]] == [str(music / r["path"]) for r in text["results"]]  # To play.
  printed, _ = run("mclap.search", "--index", tmp_path / "index", "--top_k", 1, "--json", query)
  assert json.loads(printed)["results"][0]["path"] == text["results"][0]["path"]


def test_search_refuses_a_query_file_it_cannot_use_in_one_line(trained, model, music, tmp_path, monkeypatch):
  embed.embed_folder(trained[2], music, tmp_path / "index", show_progress=False)
  loads = []
  monkeypatch.setattr(mclap, "load", lambda *a, **k: loads.append(a) or model)
  for like, message in [
    (music / "b.flac", r"--like .*b.flac does not exist; did you mean --like .*jazz/b.flac\?"),
    (music / "a.wa", r"--like .*a.wa does not exist; did you mean --like .*a.wav\?"),
    (music / "jazz", r"--like .*jazz is a folder: --like takes an audio file"),
  ]:
    with pytest.raises(UserError, match=message):
      search.search(tmp_path / "index", [], like=[str(like)])
  with pytest.raises(UserError, match=r"--top_k=0: ask for at least one result"):
    search.search(tmp_path / "index", ["calm piano"], top_k=0)
  with pytest.raises(UserError, match=r"an empty text query ranks nothing"):
    search.search(tmp_path / "index", ["calm piano", " "])
  # A file given as a text query is what --like is for: "a.wav" is no caption.
  with pytest.raises(UserError, match=r"a.wav is a file: to find music like it, pass --like .*a.wav"):
    search.search(tmp_path / "index", [str(music / "a.wav")])
  embed.embed_folder(tmp_path / "moved", music, tmp_path / "index2", show_progress=False, model=model)
  with pytest.raises(UserError, match=r"moved does not exist: pass --bundle with where it is now \(the bundle .*2"):
    search.search(tmp_path / "index2", ["calm piano"])  # The index's bundle was moved since.
  assert not loads  # All refused before the bundle loads.
  # A file that cannot be decoded: no hint at the Python API's errors='skip', which a search cannot take.
  with pytest.raises(UserError, match=r"^--like .*silent.wav: silent: peak amplitude below \S+$"):
    search.search(tmp_path / "index", ["calm piano"], like=[str(music / "silent.wav")])


def test_index_search_top_k_matches_a_full_sort():
  rng = np.random.default_rng(0)
  embeddings = rng.standard_normal((1000, 16)).astype(np.float32)
  index = index_lib.Index.__new__(index_lib.Index)
  index.embeddings = embeddings
  queries = rng.standard_normal((3, 16)).astype(np.float32)
  for q, hits in zip(queries, index.search(queries, 5, exclude={7})):
    scores = embeddings @ q
    scores[7] = -np.inf
    assert [i for i, _ in hits] == list(np.argsort(-scores, kind="stable")[:5])
