"""A path one level off (the folder above or below, a file in it, a typo) is answered with the
folder the user meant, by every job that reads a corpus, workdir, bundle, index or download."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, hub_cache

from mclap import cli, embed, export, paths, train
from mclap import eval as eval_lib
from mclap.data import records
from mclap.errors import UserError
from mclap.models import weights
from mclap.prepare.sources import folder, musiccaps
from mclap.serve import bundle, index


def _workdir(path):
  (path / "checkpoints").mkdir(parents=True)
  (path / weights.CONFIG_FILE).write_text("{}")
  return path


def test_near_finds_the_folder_one_level_off_and_nothing_else(tmp_path):
  runs = tmp_path / "runs"
  demo = _workdir(runs / "demo")
  deep = _workdir(runs / "sweep/lr3")
  (runs / "notes").mkdir()
  (runs / "notes/config.json").write_text("{}")  # A config.json alone (a tokenizer folder) is no workdir.
  (runs / ".hidden").mkdir()
  _workdir(runs / ".hidden/old")
  assert paths.near(runs, weights.is_workdir) == [demo, deep]  # Below, and two below; hidden folders are skipped.
  assert paths.near(demo / "checkpoints", weights.is_workdir) == [demo]  # A folder inside was named.
  (demo / "checkpoints/600").mkdir()
  assert paths.near(demo / "checkpoints/600", weights.is_workdir) == [demo]  # Two levels inside.
  assert paths.near(demo / "checkpoints/700", weights.is_workdir) == []  # Missing, and no close sibling.
  assert paths.near(demo / weights.CONFIG_FILE, weights.is_workdir) == [demo]  # The file, not its folder.
  assert paths.near(runs / "dem", weights.is_workdir) == [demo]  # A typo.
  assert paths.near(runs / "other", weights.is_workdir) == []
  assert paths.near(tmp_path / "elsewhere", weights.is_workdir) == []
  assert paths.near(demo, weights.is_workdir) == []  # Itself is not "one level off".


def test_every_job_names_the_folder_the_user_meant(tmp_path):
  corpus = tmp_path / "data/demo-corpus"
  corpus.mkdir(parents=True)
  (corpus / records.INFO_FILE).write_text("{}")
  with pytest.raises(
    records.CorpusError, match=rf"^{tmp_path}/data is not a prepared corpus .*did you mean {corpus}\?$"
  ):
    records.CorpusReader(tmp_path / "data", "train")
  with pytest.raises(records.CorpusError, match=rf"{corpus}/dataset_info.json is a file; did you mean {corpus}\?"):
    records.read_info(corpus / records.INFO_FILE)
  with pytest.raises(records.CorpusError, match=rf"demo-corpu does not exist; did you mean {corpus}\? Else create one"):
    records.read_info(tmp_path / "data/demo-corpu")
  with pytest.raises(records.CorpusError, match=r"nowhere does not exist: create one with `python -m mclap.data.prep"):
    records.read_info(tmp_path / "nowhere")

  unfinished = tmp_path / "unfinished"
  (unfinished / records.PROGRESS_DIR).mkdir(parents=True)
  with pytest.raises(records.CorpusError, match="preparation did not finish .*re-run the same prepare command"):
    records.read_info(unfinished)

  demo = _workdir(tmp_path / "runs/demo")
  for job in (weights.read_model, lambda w: export.export(w, tmp_path / "bundle")):
    with pytest.raises(UserError, match=rf"runs is not a training workdir .*did you mean --workdir {demo}\?"):
      job(tmp_path / "runs")
    with pytest.raises(UserError, match=rf"checkpoints is not a training workdir .*did you mean --workdir {demo}\?"):
      job(demo / "checkpoints")
  with pytest.raises(UserError, match=rf"did you mean --config.model.audio.init_from={demo}\?"):
    weights.load_tower(None, tmp_path / "runs", "audio")
  for slip in (tmp_path / "runs", demo / "checkpoints"):
    with pytest.raises(UserError, match=rf"is not a training workdir, but {demo} is one: name it in --workdir"):
      train.train(None, slip)  # Refused before the config is read: nothing is written into the old run.
  assert sorted(p.name for p in demo.iterdir()) == ["checkpoints", "config.json"]
  # A folder a job writes named by a file in it, or any file: these were tracebacks of making a folder there.
  with pytest.raises(
    UserError, match=rf"--workdir {demo}/config.json is a file, not a folder \(did you mean --workdir {demo}\?\)$"
  ):
    train.train(None, demo / "config.json")
  with pytest.raises(UserError, match=rf"^--output {demo}/config.json is a file, not a folder$"):
    eval_lib.evaluate(None, demo, output=demo / "config.json")
  # A folder of other files (a report.md of one's own among them), or the run itself: refused
  # before anything is read, not written over.
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "report.md").write_text("mine")
  (notes / "todo.txt").write_text("")
  for output, others in ((notes, "todo.txt"), (demo, "checkpoints")):
    with pytest.raises(UserError, match=rf"^--output {output} holds files an evaluation does not write \({others}\);"):
      eval_lib.evaluate(None, demo, output=output)
  assert (notes / "report.md").read_text() == "mine"

  exported = tmp_path / "bundles/b1"
  (exported / bundle.VARIABLES_DIR).mkdir(parents=True)
  (exported / bundle.BUNDLE_FILE).write_text("{}")
  for slip in (tmp_path / "bundles", exported / bundle.VARIABLES_DIR):
    with pytest.raises(UserError, match=rf"is not an mclap bundle .*did you mean {exported}\?"):
      bundle.read_meta(slip)
    with pytest.raises(UserError, match=rf"is not a bundle .*did you mean configs/finetune.py:{exported}\?$"):
      cli.load_config(f"{ROOT}/configs/finetune.py:{slip}")  # Named no bundle: said what it fine-tunes.
  with pytest.raises(UserError, match=rf"bundle.json is a file; did you mean configs/finetune.py:{exported}\?$"):
    cli.load_config(f"{ROOT}/configs/finetune.py:{exported / bundle.BUNDLE_FILE}")
  # --overwrite replaces a bundle, not the run named by a slip (it deleted its checkpoints), nor a file.
  with pytest.raises(UserError, match=rf"^{demo} is not a bundle \(it holds checkpoints, config.json\); --overwrite"):
    export.export(demo, demo, overwrite=True)
  with pytest.raises(UserError, match=rf"--output {exported}/bundle.json is a file, not a folder \(did you mean"):
    export.export(demo, exported / bundle.BUNDLE_FILE, overwrite=True)
  assert sorted(p.name for p in demo.iterdir()) == ["checkpoints", "config.json"]
  assert bundle.check_output(exported, overwrite=True) == exported  # A bundle is replaced.
  finetune = cli.load_config(str(ROOT / "configs/muscall.py:demo"))
  finetune.model.init_from = str(tmp_path / "bundles")  # Was a FileNotFoundError traceback.
  with pytest.raises(UserError, match=rf"bundles is not a bundle.*did you mean --config.model.init_from={exported}\?"):
    weights.load_pretrained(None, finetune)

  built = tmp_path / "indexes/music"
  built.mkdir(parents=True)
  (built / index.INDEX_FILE).write_text(json.dumps({}))
  with pytest.raises(UserError, match=rf"indexes is not a search index .*did you mean {built}\?"):
    index.Index(tmp_path / "indexes")
  for job, flag in ((embed.embed_folder, "--output"), (embed.write_features, "--features_out")):
    with pytest.raises(UserError, match=rf"{flag} {built}/index.json is a file, not a folder"):
      job(exported, tmp_path, built / index.INDEX_FILE)  # Before the bundle is read.
  with pytest.raises(UserError, match=rf"\(did you mean --output {built}\?\)$"):
    embed.embed_folder(exported, tmp_path, built / index.INDEX_FILE)
  # A folder of other files (the folder above the index, the music itself) is no place for one: the
  # index's commit deleted every folder in it named data-* (`data-2019`, the user's).
  (tmp_path / "indexes/data-2019").mkdir()
  with pytest.raises(
    UserError,
    match=rf"indexes already holds files that are not an index's \(data-2019, music\); did you mean --output {built}\?",
  ):
    embed.embed_folder(exported, tmp_path, tmp_path / "indexes")
  assert (tmp_path / "indexes/data-2019").is_dir()


def test_a_download_folder_one_level_off_names_the_right_input(tmp_path):
  root = tmp_path / "downloads/musiccaps"
  (root / "audio").mkdir(parents=True)
  (root / "musiccaps-public.csv").write_text("ytid,start_s,end_s,caption\n")
  for slip in (tmp_path / "downloads", root / "audio"):
    with pytest.raises(UserError, match=rf"musiccaps-public.csv not found: .*; did you mean --input {root}\?$"):
      musiccaps.list_items(slip, seed=0)
  with pytest.raises(UserError, match="or --metadata FILE$"):
    musiccaps.list_items(tmp_path / "downloads/other", seed=0)
  own = tmp_path / "downloads/my_music"
  (own / "audio").mkdir(parents=True)
  (own / "metadata.jsonl").write_text("")
  with pytest.raises(UserError, match=rf"needs metadata.csv or metadata.jsonl .*; did you mean --input {own}\?$"):
    folder.list_items(own / "audio", seed=0)


def test_a_home_folder_after_an_equals_sign_is_expanded(tmp_path):
  """`--workdir=~/runs/x`: the shell leaves `~` after `=` alone, and jobs made a `~` folder in the
  working directory (or looked for one)."""
  (tmp_path / "runs").mkdir()
  command = [sys.executable, "-m", "mclap.eval", "--workdir=~/runs/x"]
  result = subprocess.run(
    command, cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)}, capture_output=True, text=True
  )
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'runs/x'} does not exist"), (
    result.stderr
  )
  assert not (tmp_path / "~").exists()


def test_a_hub_cache_folder_stands_for_the_snapshot_refs_main_names(tmp_path):
  model = tmp_path / "model"
  model.mkdir()
  (model / "config.json").write_text("{}")
  cache = hub_cache(model, tmp_path / "hub")
  (snapshot,) = (cache / "snapshots").iterdir()
  assert paths.hub_snapshot(cache) == snapshot and paths.hub_snapshot(model) == model
  assert paths.model_file(cache, "config.json", "") == snapshot / "config.json"
  (cache / "snapshots" / "older").mkdir()  # Two snapshots: refs/main says which,
  assert paths.hub_snapshot(cache) == snapshot
  (cache / "refs" / "main").unlink()  # and without it none is chosen, but the one with the file is named.
  with pytest.raises(
    UserError, match=rf"models--org--model is not a folder with config.json; did you mean {snapshot}\?$"
  ):
    paths.model_file(cache, "config.json", "download it again")
