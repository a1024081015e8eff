"""`prepare` on a corpus built to break it: every bad item is rejected with its reason, every good
one kept, nothing hangs, and a very long file costs the memory of its cap."""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from conftest import ROOT, TINY_MEL, corpus_records, corpus_rejects, fake_record, tone

from mclap.data import audio, records
from mclap.prepare import writer

RATE = 16000


def _sparse_wav(path, seconds, rate, channels, head_seconds=2.0):
  """A 16-bit WAV of `seconds` whose first `head_seconds` are a tone and the rest a sparse hole
  (zeros that take no disk space), so a two-hour file costs nothing to make."""
  frames = int(seconds * rate)
  data_bytes = frames * channels * 2
  header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
  header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
  header += b"data" + struct.pack("<I", data_bytes)
  head = (tone(head_seconds, rate, channels) * 30000).astype("<i2").tobytes()
  with open(path, "wb") as f:
    f.write(header + head)
    f.truncate(len(header) + data_bytes)


def _hostile_corpus(root):
  """MusCALL's layout with every kind of bad input beside good ones; returns the expected
  (kept ids, rejected id -> reason)."""
  audio_dir = root / "audio"
  audio_dir.mkdir(parents=True)
  soundfile.write(audio_dir / "good.wav", tone(2.0, RATE), RATE)
  soundfile.write(audio_dir / "café del mar ♪.flac", tone(2.0, 44100), 44100)
  soundfile.write(audio_dir / "wide.wav", tone(1.5, 96000, channels=8), 96000)  # 8 channels, 96 kHz.
  _sparse_wav(audio_dir / "long.wav", seconds=2 * 3600, rate=48000, channels=2)
  soundfile.write(audio_dir / "flac inside.mp3", tone(2.0, 22050), 22050, format="FLAC")  # Wrong extension.
  soundfile.write(audio_dir / "good.ogg", tone(2.0, 32000), 32000)
  (audio_dir / "zero.wav").write_bytes(b"")
  soundfile.write(audio_dir / "full.mp3", tone(4.0, 44100), 44100)
  whole = (audio_dir / "full.mp3").read_bytes()
  (audio_dir / "cut.mp3").write_bytes(whole[: len(whole) // 2])
  (audio_dir / "text.wav").write_text("this is not audio\n")
  soundfile.write(audio_dir / "silent.wav", np.zeros(2 * RATE), RATE)
  nan = tone(2.0, RATE).astype(np.float32)
  nan[100], nan[200] = np.nan, np.inf
  soundfile.write(audio_dir / "nan.wav", nan, RATE, subtype="FLOAT")
  os.symlink("loop.wav", audio_dir / "loop.wav")  # Points at itself.
  os.mkfifo(audio_dir / "fifo.wav")  # Opening it would block forever.

  long_caption = "la " * 3334
  entries = [
    {"audio_id": "good", "caption": "a calm piano", "audio_path": "good.wav"},
    {"audio_id": "spaces and ünïcödé", "caption": "guitar ♪", "audio_path": "café del mar ♪.flac"},
    {"audio_id": "wide", "caption": "an orchestra", "audio_path": "wide.wav"},
    {"audio_id": "long", "caption": "a long drone", "audio_path": "long.wav"},
    {"audio_id": "flac inside", "caption": "a flute", "audio_path": "flac inside.mp3"},
    {"audio_id": "long caption", "caption": long_caption, "audio_path": "good.ogg"},
    {"audio_id": "zero", "caption": "x", "audio_path": "zero.wav"},
    {"audio_id": "cut", "caption": "x", "audio_path": "cut.mp3"},
    {"audio_id": "text", "caption": "x", "audio_path": "text.wav"},
    {"audio_id": "silent", "caption": "x", "audio_path": "silent.wav"},
    {"audio_id": "nan", "caption": "x", "audio_path": "nan.wav"},
    {"audio_id": "loop", "caption": "x", "audio_path": "loop.wav"},
    {"audio_id": "fifo", "caption": "x", "audio_path": "fifo.wav"},
    {"audio_id": "no path", "caption": "x"},
    {"audio_id": "no caption", "audio_path": "good.wav"},
    {"audio_id": "good", "caption": "the same id again", "audio_path": "good.ogg"},
    {"audio_id": "gone", "caption": "x", "audio_path": "gone.wav"},
    {"audio_id": "latin-1", "caption": "@LATIN1@", "audio_path": "good.wav"},
  ]
  text = json.dumps(entries, ensure_ascii=False).encode("utf-8")
  (root / "dataset_train.json").write_bytes(text.replace(b"@LATIN1@", "café music".encode("latin-1")))
  for name, split in (("dataset_val.json", "validation"), ("dataset_test.json", "test")):  # An empty split is refused.
    (root / name).write_text(json.dumps([{"audio_id": split, "caption": "a cello", "audio_path": "good.ogg"}]))
  kept = {"good", "spaces and ünïcödé", "wide", "long", "flac inside", "long caption"}
  rejected = {
    "zero": "empty",
    "cut": "truncated",
    "text": "unreadable",
    "silent": "silent",
    "nan": "non-finite samples",
    "loop": "unreadable",
    "fifo": "unreadable",
    "dataset_train.json#13": "bad metadata",
    "no caption": "empty caption",
    "good": "duplicate id",
    "gone": "missing file",
    "latin-1": "caption not UTF-8",
  }
  return kept, rejected, long_caption


def test_hostile_corpus_rejects_each_bad_item_with_its_reason_and_keeps_every_good_one(tmp_path):
  kept, rejected, long_caption = _hostile_corpus(tmp_path / "hostile")
  out = tmp_path / "corpus"
  args = ["--source", "audiocaption", "--input", tmp_path / "hostile", "--output", out, "--max_seconds", "30"]
  result = subprocess.run(
    [sys.executable, "-m", "mclap.data.prepare", "--num_workers", "2", "--mel.n_mels", "32", *map(str, args)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,  # Never hangs: the FIFO is not opened.
  )
  assert result.returncode == 0, result.stderr
  found = corpus_records(out, "train")
  assert set(found) == kept
  assert set(corpus_records(out, "validation")) == {"validation"} and set(corpus_records(out, "test")) == {"test"}
  assert corpus_rejects(out) == rejected
  assert found["long caption"]["captions"] == [long_caption.strip()]
  assert found["long"]["mel"].shape == (32, 1 + 30 * RATE // 512)  # Capped at --max_seconds.
  info = records.read_info(out)
  assert info["num_rejected"] == len(rejected) and info["splits"]["train"]["count"] == len(kept)
  details = {r["id"]: r["detail"] for r in map(json.loads, (out / records.REJECTS_FILE).read_text().splitlines())}
  assert "symbolic links" in details["loop"] and "not a regular file" in details["fifo"]
  assert "has no 'audio_path'" in details["dataset_train.json#13"]


def test_a_two_hour_file_costs_the_memory_of_its_cap(tmp_path):
  _sparse_wav(tmp_path / "long.wav", seconds=2 * 3600, rate=48000, channels=2)
  # In a fresh process: tracemalloc counts every thread's arrays, and other tests leave threads.
  measure = (
    "import sys, tracemalloc; from mclap.data import audio; tracemalloc.start(); "
    f"wave = audio.load_audio(sys.argv[1], {RATE}, max_seconds=60); "
    "print(len(wave), wave.nbytes, tracemalloc.get_traced_memory()[1])"
  )
  result = subprocess.run(
    [sys.executable, "-c", measure, str(tmp_path / "long.wav")], cwd=ROOT, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr
  samples, nbytes, peak = map(int, result.stdout.split())
  assert samples == 60 * RATE
  whole_file_as_float = 2 * 3600 * 48000 * 2 * 4
  assert peak < 3 * nbytes + 4 * audio.BLOCK_FRAMES * 2 * 4 < whole_file_as_float / 50


def _hangs_or_crashes(item):
  kind, _ = item
  if kind == "hang":
    time.sleep(3600)
  if kind == "segfault":
    os.kill(os.getpid(), signal.SIGSEGV)
  return fake_record(item)


@pytest.mark.slow
def test_a_hung_or_crashed_decoder_is_rejected_and_the_job_finishes(tmp_path):
  kinds = ["ok", "hang", "ok", "segfault", "ok", "ok"]
  info = writer.write_corpus(
    tmp_path,
    {"train": list(zip(kinds, range(len(kinds))))},
    _hangs_or_crashes,
    mel_config=TINY_MEL,
    source="test",
    num_workers=2,
    shard_size=4,
    item_timeout=15.0,  # Generous: CI machines are busy.
    show_progress=False,
  )
  assert sorted(corpus_records(tmp_path, "train")) == ["x0", "x2", "x4", "x5"]
  assert corpus_rejects(tmp_path) == {str(("hang", 1)): "timed out", str(("segfault", 3)): "timed out"}
  assert info["rejected_by_reason"] == {"timed out": 2}
