import functools
import json
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from conftest import ROOT, TINY_MEL, build_synthetic, corpus_records, corpus_rejects, fake_record, tone

from mclap.data import records
from mclap.errors import UserError
from mclap.prepare import decode, listing, writer
from mclap.prepare.sources import audiocaption, folder


def test_bad_items_are_rejected_with_reasons_and_good_ones_kept(tmp_path):
  kinds = ["ok", "crash", "ok", "nan", "reject", "shape", "dup", "dup", "empty", "ok"]
  info = writer.write_corpus(
    tmp_path,
    {"train": list(zip(kinds, range(len(kinds))))},
    fake_record,
    mel_config=TINY_MEL,
    source="test",
    num_workers=0,
    shard_size=4,
    show_progress=False,
  )
  reader = records.CorpusReader(tmp_path, "train")
  assert [reader[i]["id"] for i in range(len(reader))] == ["x0", "x2", "dup", "x9"]
  rejects = [json.loads(line) for line in (tmp_path / records.REJECTS_FILE).read_text().splitlines()]
  reasons = {r["id"]: r["reason"] for r in rejects}
  assert reasons["x3"] == "non-finite mel values"
  assert reasons["x4"] == "silent"
  assert reasons["x5"].startswith("mel shape [3, 4]")
  assert reasons["dup"] == "duplicate id"
  assert reasons["x8"] == "empty caption"
  assert "OSError: cannot decode" in [r for r in rejects if r["reason"] == "error"][0]["detail"]
  assert info["num_rejected"] == 6 and info["splits"]["train"]["count"] == 4
  assert info["tags"] == ["dup", "ok"]


def test_ctrl_c_stops_the_job_in_one_line_and_not_its_workers(tmp_path):
  """Ctrl-C reaches the job and every worker: the job stops with the finished shards kept, and
  the workers leave it to the job (one killed by it lost its item: "timed out")."""
  kwargs = dict(mel_config=TINY_MEL, source="test", shard_size=2, show_progress=False)
  items = [("ok", 0), ("ok", 1), ("ok", 2), ("ok", 3), ("interrupt", 4), ("ok", 5)]
  with pytest.raises(SystemExit, match=r"^interrupted; the finished shards are kept in .*Run the same command to"):
    writer.write_corpus(tmp_path / "job", {"train": items}, fake_record, num_workers=0, **kwargs)
  assert len(list((tmp_path / "job" / records.PROGRESS_DIR).glob("*.array_record.json"))) == 2
  items = [("ok", 0), ("sigint", 1), ("ok", 2), ("sigint", 3)]
  info = writer.write_corpus(tmp_path / "pool", {"train": items}, fake_record, num_workers=1, item_timeout=20, **kwargs)
  assert info["num_rejected"] == 0 and info["splits"]["train"]["count"] == 4


def _files(directory):
  return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_worker_processes_write_the_same_corpus(tmp_path):
  build_synthetic(tmp_path / "inline", num_clips=16, seconds=1.0, num_workers=0)
  build_synthetic(tmp_path / "pool", num_clips=16, seconds=1.0, num_workers=2)
  assert _files(tmp_path / "inline") == _files(tmp_path / "pool")


def _synthetic_args(tmp_path):
  return ["--source", "synthetic", "--num_clips", "64", "--clip_seconds", "1", "--shard_size", "4"], 16


def _folder_args(tmp_path):
  """A real-audio job: 120 FLAC files in 60 shards, decoded and resampled."""
  root = tmp_path / "music"
  root.mkdir()
  rows = ["path,caption"]
  for i in range(120):
    soundfile.write(root / f"{i:03d}.flac", tone(1.0, 22050, freq=200.0 + 5 * i), 22050)
    rows.append(f"{i:03d}.flac,song {i}")
  (root / "metadata.csv").write_text("\n".join(rows) + "\n")
  return ["--source", "folder", "--input", str(root), "--shard_size", "2"], 60


@pytest.mark.parametrize("source_args", [_synthetic_args, _folder_args])
def test_resume_after_kill_redoes_only_unfinished_shards(tmp_path, source_args):
  source, num_shards = source_args(tmp_path)
  args = [sys.executable, "-m", "mclap.data.prepare", *source, "--num_workers", "0", "--mel.n_mels", "32"]
  subprocess.run(args + ["--output", str(tmp_path / "whole")], check=True, cwd=ROOT, capture_output=True)

  out = tmp_path / "killed"
  proc = subprocess.Popen(args + ["--output", str(out)], cwd=ROOT, stderr=subprocess.DEVNULL)
  progress = out / ".progress"
  deadline = time.time() + 120
  while time.time() < deadline and len(list(progress.glob("*.array_record.json"))) < 3:
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  finished = {p.name for p in progress.glob("*.array_record.json")}
  assert 3 <= len(finished) < num_shards and not (out / records.INFO_FILE).exists()

  result = subprocess.run(args + ["--output", str(out)], check=True, cwd=ROOT, capture_output=True, text=True)
  assert f"({len(finished)} already done)" in result.stderr
  assert _files(out) == _files(tmp_path / "whole")


def _scaled(item, scale):
  record = fake_record(item)
  return {**record, "mel": record["mel"] * scale}


def test_changed_work_settings_redo_the_shards(tmp_path):
  items = {"train": [("ok", i) for i in range(6)]}
  kwargs = dict(mel_config=TINY_MEL, source="test", num_workers=0, shard_size=4, show_progress=False)
  writer.write_corpus(tmp_path, items, functools.partial(_scaled, scale=1.0), **kwargs)
  writer.write_corpus(tmp_path, items, functools.partial(_scaled, scale=2.0), overwrite=True, **kwargs)
  assert float(records.CorpusReader(tmp_path, "train")[5]["mel"][0, 0]) == 10.0  # Not the stale 5.0.
  assert writer.describe(functools.partial(_scaled, scale=2.0)) == writer.describe(
    functools.partial(_scaled, scale=2.0)
  )


def test_a_corpus_prepared_by_mclap_0_1_is_resumed_not_refused(tmp_path):
  """tests/data/prepared_by_0.1 holds the progress files of `python -m mclap.data.prepare --source
  synthetic --num_clips 64 --clip_seconds 1 --mel.n_mels 16 --num_workers 0` run by mclap 0.1
  (commit b7da2d2): the same command now writes the same settings and shard fingerprints, so a
  re-run on that corpus finds every shard done instead of calling it another corpus. (Manifests
  now also keep each record's texts, for `texts.jsonl`.)"""
  args = ["--source", "synthetic", "--num_clips", "64", "--clip_seconds", "1", "--mel.n_mels", "16"]
  command = [sys.executable, "-m", "mclap.prepare", *args, "--num_workers", "0", "--output", str(tmp_path)]
  subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
  for before in sorted((ROOT / "tests/data/prepared_by_0.1").glob("*.json")):
    now = json.loads((tmp_path / ".progress" / before.name).read_text())
    now.pop("texts", None)
    assert now == json.loads(before.read_text()), before.name


def test_texts_jsonl_holds_every_records_texts_and_a_rerun_writes_it_for_an_older_corpus(tmp_path):
  """texts.jsonl: each record's id, captions and tags, split by split in record order, which
  `CorpusReader.texts` gives without reading mels. A corpus prepared before it existed (manifests
  without texts, dataset_info.json without it) is read from its records, even where a stale file
  is left (an earlier version re-preparing a corpus rewrites dataset_info.json, not texts.jsonl),
  and gets the file from a re-run of the same command, which redoes no shard."""
  info = build_synthetic(tmp_path)
  texts = (tmp_path / records.TEXTS_FILE).read_text()
  assert info["texts"] == {"file": records.TEXTS_FILE, "bytes": len(texts.encode())}
  for split in info["splits"]:
    reader = records.CorpusReader(tmp_path, split)
    expected = [{k: reader[i][k] for k in ("id", "captions", "tags")} for i in range(len(reader))]
    assert list(reader.texts()) == expected and expected
    assert list(pickle.loads(pickle.dumps(reader.texts()))) == expected  # As worker processes get it.
  (tmp_path / records.TEXTS_FILE).write_text(texts.replace("a", "b"))  # Stale.
  for manifest in (tmp_path / records.PROGRESS_DIR).glob("*.array_record.json"):
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "texts"}))
  (tmp_path / records.INFO_FILE).write_text(json.dumps({k: v for k, v in info.items() if k != "texts"}))
  reader = records.CorpusReader(tmp_path, split)
  assert reader.texts() is reader  # Read from the records.
  shards = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.array_record")}
  build_synthetic(tmp_path)
  assert (tmp_path / records.TEXTS_FILE).read_text() == texts
  assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.array_record")} == shards

  reader, lines = records.CorpusReader(tmp_path, split), texts.splitlines()
  last = len(lines)
  damaged = {  # One byte short, then three of the size dataset_info.json lists.
    texts[:-1]: f"is missing or not the file dataset_info.json lists \\({len(texts.encode())} bytes\\)",
    "\n".join(lines[:-2]) + " " + "\n".join(lines[-2:]) + "\n": f"has {last - 1} lines, dataset_info.json lists {last}",
    "\n".join([*lines[:-1], lines[-1][:20] + "x" * (len(lines[-1]) - 20)]) + "\n": f"line {last} is damaged",
    "\n".join(lines[1:] + lines[:1]) + "\n": f"line {last} is damaged .*it is of split 'train'",  # Another order.
  }
  for text, message in damaged.items():
    (tmp_path / records.TEXTS_FILE).write_text(text)
    with pytest.raises(records.CorpusError, match=message + ".*re-run the same prepare command"):
      reader.texts()[len(reader) - 1]


def test_whole_file_decoding_is_described_as_by_mclap_0_1():
  """Audio sources' shards are reused only if their work is described as before: whole-file
  decoding keeps mclap 0.1's description (printed by commit b7da2d2 for these settings), and a
  waveform crop makes another one."""
  settings = decode.DecodeSettings((("n_mels", 16),), 600.0, 1.0, 16000)
  before = (
    "('mclap.data.sources.decode_record', (), [('settings', DecodeSettings(mel=(('n_mels', 16),), "
    "max_seconds=600.0, min_seconds=1.0, npy_sample_rate=16000))])"
  )
  assert writer.describe(decode.work_function(decode.decode_record, settings, None)) == before
  assert writer.describe(decode.work_function(decode.decode_record, settings, decode.WaveformCut(20.0))) != before


def test_changed_plan_rebuilds_and_drops_stale_shards(tmp_path):
  build_synthetic(tmp_path, num_clips=32, seconds=1.0)
  info = build_synthetic(tmp_path, num_clips=16, seconds=1.0)
  shards = sorted(p.name for p in tmp_path.glob("*.array_record"))
  assert shards == sorted(s["file"] for split in info["splits"].values() for s in split["shards"])
  assert sum(v["count"] for v in info["splits"].values()) == 16


@pytest.mark.parametrize("bad", ["bogus"])
def test_unknown_source_is_a_one_line_error(tmp_path, bad):
  result = subprocess.run(
    [sys.executable, "-m", "mclap.data.prepare", "--source", bad, "--output", str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode != 0
  assert (
    result.stderr.strip().splitlines()[-1]
    == f"error: unknown --source={bad}; choose one of: synthetic, features, audiocaption, folder, musiccaps, "
    "song_describer, gtzan, mtat, mtg_jamendo, tinysol, tfds:<name>"
  )


def _folder_items(root, names):
  """The folder source's listing of `names` (all in train) and its decoding work function."""
  (root / "metadata.csv").write_text("path,caption,split\n" + "".join(f"{n},song {n},train\n" for n in names))
  settings = decode.DecodeSettings(tuple(sorted(TINY_MEL.items())), 600.0, 0.5, 16000)
  return folder.list_items(root, seed=0).splits, functools.partial(decode.decode_record, settings=settings)


def test_a_rerun_retries_rejected_files_that_changed(tmp_path, capsys):
  root = tmp_path / "music"
  root.mkdir()
  soundfile.write(root / "good.wav", tone(1.0, 16000), 16000)
  (root / "corrupt.wav").write_bytes(b"RIFF not really")
  splits, work = _folder_items(root, ["good.wav", "corrupt.wav", "later.wav"])
  kwargs = dict(mel_config=TINY_MEL, source="folder", num_workers=0, shard_size=2, show_progress=False)
  writer.write_corpus(tmp_path / "out", splits, work, **kwargs)
  assert corpus_rejects(tmp_path / "out") == {"corrupt.wav": "unreadable", "later.wav": "missing file"}
  writer.write_corpus(tmp_path / "out", splits, work, **kwargs)  # Nothing changed: nothing redone,
  writer.write_corpus(tmp_path / "out", splits, work, retry_rejects=True, **kwargs)  # unless asked.
  err = capsys.readouterr().err
  assert "wrote 0 of 2 shards" in err and "wrote 2 of 2 shards" in err and "--retry_rejects" in err
  assert corpus_rejects(tmp_path / "out") == {"corrupt.wav": "unreadable", "later.wav": "missing file"}
  soundfile.write(root / "later.wav", tone(1.0, 16000), 16000)  # Downloaded after all,
  soundfile.write(root / "corrupt.wav", tone(1.0, 16000, freq=330.0), 16000)  # replaced by a good copy.
  info = writer.write_corpus(tmp_path / "out", splits, work, **kwargs)
  assert info["num_rejected"] == 0 and set(corpus_records(tmp_path / "out", "train")) == {
    "good.wav", "corrupt.wav", "later.wav",
  }  # fmt: skip


def _needs_package(item):
  """Fails like a worker without an installed package until the marker file exists."""
  marker, i = item
  if not os.path.exists(marker):
    raise ModuleNotFoundError("No module named 'platformdirs'")
  return {"id": f"x{i}", "mel": np.zeros((TINY_MEL["n_mels"], 4), np.float32), "captions": ["c"]}


def test_a_job_whose_items_mostly_fail_for_one_reason_stops(tmp_path, capsys):
  marker = str(tmp_path / "installed")
  items = {"train": [(marker, i) for i in range(40)]}
  kwargs = dict(mel_config=TINY_MEL, source="test", num_workers=0, shard_size=8, show_progress=False)
  with pytest.raises(UserError, match=r"20 of the first 20 items were rejected as 'error'.*install it"):
    writer.write_corpus(tmp_path / "out", items, _needs_package, **kwargs)
  assert not (tmp_path / "out" / records.INFO_FILE).exists()
  pathlib.Path(marker).touch()  # The package is installed: the same job now completes.
  info = writer.write_corpus(tmp_path / "out", items, _needs_package, **kwargs)
  assert info["splits"]["train"]["count"] == 40 and info["num_rejected"] == 0

  root = tmp_path / "music"  # A wrong audio folder: every file is missing, after a few good ones.
  root.mkdir()
  names = [f"{i}.wav" for i in range(30)]
  for name in names[:8]:
    soundfile.write(root / name, tone(0.6, 16000), 16000)
  splits, work = _folder_items(root, names)
  kwargs["source"] = "folder"
  with pytest.raises(UserError, match=r"22 of 30 items were rejected as 'missing file'.*--audio_dir"):
    writer.write_corpus(tmp_path / "wrong", splits, work, **kwargs)
  info = writer.write_corpus(tmp_path / "wrong", splits, work, allow_rejects=True, **kwargs)
  assert info["num_rejected"] == 22 and "--retry_rejects" in capsys.readouterr().err
  splits, work = _folder_items(root, names[6:12])  # A small job is no exception: 4 of its 6 are missing.
  with pytest.raises(UserError, match=r"4 of 6 items were rejected as 'missing file'"):
    writer.write_corpus(tmp_path / "small", splits, work, **kwargs)


def test_files_listed_one_folder_off_stop_the_job_before_it_decodes_and_name_the_folder(tmp_path):
  """A metadata file whose paths start one folder up (`music/x.wav` read with --input music), or
  audio one folder below where the source looks: nothing is decoded or written, and the error says
  which flag finds the files. A finished corpus re-run without its audio needs no files."""
  root = tmp_path / "music"
  root.mkdir()
  names = [f"{i}.wav" for i in range(3)]
  for name in names:
    soundfile.write(root / name, tone(0.6, 16000), 16000)
  (root / "metadata.csv").write_text("path,caption\n" + "".join(f"music/{n},song {n}\n" for n in names))
  settings = decode.DecodeSettings(tuple(sorted(TINY_MEL.items())), 600.0, 0.5, 16000)
  work = functools.partial(decode.decode_record, settings=settings)
  kwargs = dict(mel_config=TINY_MEL, source="folder", num_workers=0, shard_size=8, show_progress=False)

  def write(listed):
    check = functools.partial(listing.check_files_exist, listed.file_root)
    return writer.write_corpus(tmp_path / "out", listed.splits, work, check_items=check, **kwargs)

  expected = re.escape(f"none of the first 3 listed files exists under {root} (e.g. {root / 'music'}/") + r"\d\.wav\); "
  expected += re.escape(f"they are under {tmp_path}: pass --input {tmp_path} --metadata {root / 'metadata.csv'}")
  with pytest.raises(UserError, match=f"^{expected}$"):
    write(folder.list_items(root, seed=0))
  assert not (tmp_path / "out").exists()
  fixed = folder.list_items(tmp_path, seed=0, metadata=str(root / "metadata.csv"))
  assert sum(s["count"] for s in write(fixed)["splits"].values()) == 3
  for name in names:
    (root / name).unlink()
  assert sum(s["count"] for s in write(fixed)["splits"].values()) == 3

  muscall = tmp_path / "muscall"  # MusCALL's layout with the audio in wavs/ instead of audio/.
  (muscall / "wavs").mkdir(parents=True)
  soundfile.write(muscall / "wavs/a.wav", tone(0.6, 16000), 16000)
  for split in ("train", "val", "test"):
    (muscall / f"dataset_{split}.json").write_text(
      json.dumps([{"audio_id": split, "caption": "c", "audio_path": "a.wav"}])
    )
  listed = audiocaption.list_items(muscall)
  items = [i for s in listed.splits.values() for i in s]
  with pytest.raises(
    UserError, match=re.escape(f"they are under {muscall / 'wavs'}: pass --audio_dir {muscall / 'wavs'}")
  ):
    listing.check_files_exist(listed.file_root, items)
  listed = audiocaption.list_items(muscall, audio_dir=str(muscall / "wavs"))
  listing.check_files_exist(listed.file_root, [i for s in listed.splits.values() for i in s])


def test_an_output_folder_of_another_corpus_is_refused_unless_overwrite(tmp_path):
  kwargs = dict(mel_config=TINY_MEL, num_workers=0, shard_size=4, show_progress=False)
  first = {"train": [("ok", i) for i in range(6)], "test": [("ok", 10 + i) for i in range(3)]}
  writer.write_corpus(tmp_path, first, fake_record, source="first", **kwargs)
  (tmp_path / "notes.txt").write_text("mine")
  second = {"test": [("ok", i) for i in range(5)]}
  with pytest.raises(UserError, match="other settings \\(source differ\\).*--overwrite"):
    writer.write_corpus(tmp_path, second, fake_record, source="second", **kwargs)
  info = writer.write_corpus(tmp_path, second, fake_record, source="second", overwrite=True, **kwargs)
  listed = {s["file"] for split in info["splits"].values() for s in split["shards"]}
  assert set(info["splits"]) == {"test"} and {p.name for p in tmp_path.glob("*.array_record")} == listed
  assert (tmp_path / "notes.txt").read_text() == "mine"  # Only the corpus's own files go.
  (tmp_path / ".progress/settings.json").unlink()  # A corpus of an older mclap: its info is compared,
  older = json.loads((tmp_path / records.INFO_FILE).read_text())
  older["mel"] = {k: v for k, v in older["mel"].items() if k not in ("pad_mode", "window_norm")}  # with defaults.
  (tmp_path / records.INFO_FILE).write_text(json.dumps(older))
  writer.write_corpus(tmp_path, second, fake_record, source="second", **kwargs)
  with pytest.raises(UserError, match="other settings \\(source differ\\)"):
    writer.write_corpus(tmp_path, second, fake_record, source="third", **kwargs)
  music = tmp_path / "music"  # --output naming a folder of other files (the audio's): its files stay alone.
  music.mkdir()
  for name in ("a.wav", "b.wav", "c.wav", "metadata.csv", ".DS_Store"):
    (music / name).write_text("")
  with pytest.raises(
    UserError, match=r"music already holds files that are not a corpus \(a.wav, b.wav, c.wav, \.\.\.\)"
  ):
    writer.write_corpus(music, second, fake_record, source="second", **kwargs)
  assert sorted(p.name for p in music.iterdir()) == [".DS_Store", "a.wav", "b.wav", "c.wav", "metadata.csv"]
  (tmp_path / "new").mkdir()
  (tmp_path / "new/.DS_Store").write_text("")  # A new folder that a file browser made is empty.
  writer.write_corpus(tmp_path / "new", second, fake_record, source="second", **kwargs)
  for file, hint in (
    (music / "a.wav", ""),
    (next(tmp_path.glob("test-*.array_record")), re.escape(f" (did you mean --output {tmp_path}?)")),
  ):
    with pytest.raises(UserError, match=rf"--output {file} is a file, not a folder{hint}$"):
      writer.write_corpus(file, second, fake_record, source="second", **kwargs)  # Was a NotADirectoryError.


def test_workers_started_from_an_unguarded_script_stop_with_the_fix(tmp_path):
  script = tmp_path / "make_corpus.py"
  script.write_text(
    "from mclap.prepare import synthetic, writer\n"
    "mel = dict(sample_rate=16000, n_fft=512, hop_length=256, n_mels=16, fmin=0.0, fmax=8000.0, htk=False,\n"
    "           norm='slaney', top_db=80.0, amin=1e-10)\n"
    f"writer.write_corpus({str(tmp_path / 'out')!r}, synthetic.plan_clips(4, 0, 0.5), synthetic.make_record_fn(mel),\n"
    "                    mel_config=mel, source='synthetic', num_workers=1)\n"
  )
  result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  fix = 'line 4 starts worker processes at the top level of a script: put that code under `if __name__ == "__main__":`'
  assert fix in result.stderr
