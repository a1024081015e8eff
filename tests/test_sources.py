import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from conftest import ROOT, corpus_records, corpus_rejects, prepare, tone

from mclap.data import audio, mel, records
from mclap.errors import UserError
from mclap.prepare import decode, listing
from mclap.prepare.listing import AudioItem
from mclap.prepare.sources import REGISTRY, folder, gtzan

RATE = 16000


def peak_hz(wave, rate):
  spectrum = np.abs(np.fft.rfft(wave))
  return np.argmax(spectrum) * rate / len(wave)


@pytest.mark.parametrize(
  "suffix, rate, channels", [(".wav", 44100, 2), (".flac", 22050, 1), (".ogg", 48000, 2), (".mp3", 32000, 1)]
)
def test_every_codec_decodes_to_16k_mono(tmp_path, suffix, rate, channels):
  path = tmp_path / f"clip{suffix}"
  soundfile.write(path, tone(2.0, rate, channels), rate)
  wave = audio.load_audio(path, RATE)
  assert wave.dtype == np.float32 and wave.ndim == 1
  assert abs(len(wave) - 2 * RATE) <= 0.06 * RATE  # Lossy codecs pad a little.
  assert abs(peak_hz(wave, RATE) - 440.0) < 2.0
  capped = audio.load_audio(path, RATE, max_seconds=0.5)
  assert abs(len(capped) - RATE // 2) <= 0.06 * RATE


def test_npy_waveforms_mono_and_stereo(tmp_path):
  np.save(tmp_path / "mono.npy", tone(1.0, RATE).astype(np.float32))
  np.save(tmp_path / "stereo.npy", tone(1.0, RATE, 2).T.astype(np.float32))  # [2, samples], MusCALL's.
  for name in ("mono.npy", "stereo.npy"):
    wave = audio.load_audio(tmp_path / name, RATE)
    assert wave.shape == (RATE,) and abs(peak_hz(wave, RATE) - 440.0) < 2.0


@pytest.mark.parametrize("suffix", [".flac", ".npy"])
def test_segment_is_cut_from_long_recordings_and_short_files_are_the_segment(tmp_path, suffix):
  rate = 22050 if suffix == ".flac" else RATE
  long = np.concatenate([tone(1.0, rate, freq=440.0), tone(2.0, rate, freq=880.0), tone(1.0, rate, freq=440.0)])
  short = tone(2.0, rate, freq=660.0)
  for name, wave in (("long", long), ("short", short)):
    if suffix == ".npy":
      np.save(tmp_path / f"{name}.npy", wave.astype(np.float32))
    else:
      soundfile.write(tmp_path / f"{name}{suffix}", wave, rate)
  cut = audio.load_audio(tmp_path / f"long{suffix}", RATE, segment=(1.0, 3.0))
  assert len(cut) == 2 * RATE and abs(peak_hz(cut, RATE) - 880.0) < 2.0
  capped = audio.load_audio(tmp_path / f"long{suffix}", RATE, segment=(1.0, 3.0), max_seconds=0.5)
  assert len(capped) == RATE // 2 and abs(peak_hz(capped, RATE) - 880.0) < 4.0
  whole = audio.load_audio(tmp_path / f"short{suffix}", RATE, segment=(30.0, 32.0))  # Already cut out.
  assert len(whole) == 2 * RATE and abs(peak_hz(whole, RATE) - 660.0) < 2.0
  # A 4 s file for the segment [3 s, 5 s): not the 2 s clip, and it ends before 5 s; either reading
  # would pair the caption with the wrong audio.
  with pytest.raises(audio.AudioError) as e:
    audio.load_audio(tmp_path / f"long{suffix}", RATE, segment=(3.0, 5.0))
  assert e.value.reason == "ambiguous length" and "4.00s" in e.value.detail


def _reason(path, **kwargs):
  with pytest.raises(audio.AudioError) as e:
    audio.load_audio(path, RATE, **kwargs)
  return e.value.reason


def test_bad_audio_is_named_by_reason(tmp_path):
  (tmp_path / "zero.wav").write_bytes(b"")
  soundfile.write(tmp_path / "full.wav", tone(1.0, RATE), RATE)
  (tmp_path / "cut.wav").write_bytes((tmp_path / "full.wav").read_bytes()[:9000])
  soundfile.write(tmp_path / "full.flac", tone(1.0, RATE), RATE)
  (tmp_path / "cut.flac").write_bytes((tmp_path / "full.flac").read_bytes()[:9000])
  soundfile.write(tmp_path / "silent.wav", np.zeros(RATE), RATE)
  np.save(tmp_path / "nan.npy", np.full(RATE, np.nan, np.float32))
  (tmp_path / "text.mp3").write_text("not audio")
  assert _reason(tmp_path / "absent.wav") == "missing file"
  assert _reason(tmp_path / "zero.wav") == "empty"
  assert _reason(tmp_path / "cut.wav") == "truncated"
  assert _reason(tmp_path / "cut.flac") == "truncated"
  assert _reason(tmp_path / "silent.wav") == "silent"
  assert _reason(tmp_path / "nan.npy") == "non-finite samples"
  assert _reason(tmp_path / "text.mp3") == "unreadable"
  (tmp_path / "song.m4a").write_bytes(b"\0\0\0\x20ftypM4A " + bytes(64))  # AAC in MP4: no libsndfile decoder.
  with pytest.raises(audio.AudioError, match=r"\.m4a is not a format libsndfile decodes; convert to FLAC first"):
    audio.load_audio(tmp_path / "song.m4a", RATE)
  assert _reason(tmp_path / "full.wav", min_seconds=2.0) == "too short"


def test_a_reject_says_what_the_decoder_said_once_and_prints_nothing(tmp_path, capfd):
  """A corrupt MP3: libsndfile calls it "not a regular file", libmpg123 prints its complaint on the
  process's stderr (over the progress bar). The reject names the path once, says what the decoder
  found, and nothing is printed."""
  (tmp_path / "corrupt.mp3").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
  settings = decode.DecodeSettings(tuple(sorted(mel.default_mel_config().items())), 600.0, 0.5, RATE)
  capfd.readouterr()
  corrupt = decode.decode_record(AudioItem(id="c", path=str(tmp_path / "corrupt.mp3")), settings)
  missing = decode.decode_record(AudioItem(id="m", path=str(tmp_path / "absent.wav")), settings)
  assert capfd.readouterr().err == ""
  assert corrupt.reason == "unreadable" and "not a regular file" not in corrupt.detail
  assert corrupt.detail.startswith(f"{tmp_path / 'corrupt.mp3'}: no decoder recognises its content (decoder: ")
  assert "Illegal Audio-MPEG-Header" in corrupt.detail and corrupt.detail.count(str(tmp_path)) == 1
  assert (missing.reason, missing.detail) == ("missing file", str(tmp_path / "absent.wav"))


def test_audiocaption_layout(tmp_path):
  root = tmp_path / "muscall"
  (root / "audio/sub").mkdir(parents=True)
  np.save(root / "audio/a.npy", tone(3.0, RATE, 2).T.astype(np.float32))
  soundfile.write(root / "audio/sub/b.flac", tone(3.0, 44100), 44100)
  soundfile.write(root / "audio/c.wav", tone(3.0, 8000, freq=300.0), 8000)
  (root / "audio/broken.wav").write_bytes(b"RIFF")
  splits = {
    "dataset_train.json": [
      {"audio_id": "a", "caption": "Slow piano. Then drums.", "audio_path": "a.npy"},
      {"audio_id": "b", "caption": "A flute", "audio_path": "sub/b.flac"},
      {"audio_id": "gone", "caption": "x", "audio_path": "gone.wav"},
      {"audio_id": "blank", "caption": "  ", "audio_path": "c.wav"},
    ],
    "dataset_val.json": [
      {"audio_id": "c", "caption": "Low hum", "audio_path": "c.wav"},
      {"audio_id": "a", "caption": "again", "audio_path": "a.npy"},
    ],
    "dataset_test.json": [{"audio_id": "d", "caption": "broken", "audio_path": "broken.wav"}],
  }
  for name, entries in splits.items():
    (root / name).write_text(json.dumps(entries))
  out = tmp_path / "corpus"
  prepare("--source", "audiocaption", "--input", str(root), "--output", str(out))
  train, val = corpus_records(out, "train"), corpus_records(out, "validation")
  assert set(train) == {"a", "b"} and set(val) == {"c"} and not corpus_records(out, "test")
  assert train["a"]["captions"] == ["Slow piano. Then drums."]
  assert train["a"]["mel"].shape == (32, 1 + 3 * RATE // 512)
  assert corpus_rejects(out) == {
    "gone": "missing file",
    "blank": "empty caption",
    "a": "duplicate id",
    "d": "unreadable",
  }
  info = records.read_info(out)
  assert info["source"] == "audiocaption" and info["num_rejected"] == 4


def test_folder_with_csv_and_hashed_splits(tmp_path):
  root = tmp_path / "music"
  root.mkdir()
  rows = ["path,caption,tags"]
  for i in range(30):
    soundfile.write(root / f"song {i}.ogg", tone(1.5, 22050, freq=200 + 10 * i), 22050)
    rows.append(f'song {i}.ogg,"calm, quiet piece {i}",ambient;piano')
  rows.append("missing.ogg,a caption,x")
  rows += ["song 0.ogg,a second caption,drums;piano", ".\\song 1.ogg,written on Windows,"]  # Rows of one clip.
  (root / "metadata.csv").write_text("\n".join(rows) + "\n")
  out = tmp_path / "corpus"
  prepare("--source", "folder", "--input", str(root), "--output", str(out), "--seed", "3")
  found = {split: corpus_records(out, split) for split in ("train", "validation", "test")}
  assert sum(len(v) for v in found.values()) == 30
  for split, recs in found.items():
    assert all(listing.hashed_split(i, 3) == split for i in recs)
  any_record = next(iter(found["train"].values()))
  assert any_record["tags"] == ["ambient", "piano"] and any_record["captions"][0].startswith("calm, quiet piece")
  assert corpus_rejects(out) == {"missing.ogg": "missing file"}
  assert records.read_info(out)["tags"] == ["ambient", "drums", "piano"]
  merged = {i: r for recs in found.values() for i, r in recs.items()}
  assert merged["song 0.ogg"]["captions"] == ["calm, quiet piece 0", "a second caption"]
  assert merged["song 0.ogg"]["tags"] == ["ambient", "piano", "drums"]
  assert merged["song 1.ogg"]["captions"] == ["calm, quiet piece 1", "written on Windows"]


def test_folder_with_jsonl_splits_and_tag_lists(tmp_path):
  root = tmp_path / "music"
  root.mkdir()
  soundfile.write(root / "x.wav", tone(1.2, RATE), RATE)
  soundfile.write(root / "y.mp3", tone(1.2, 44100), 44100)
  lines = [
    {"path": "x.wav", "caption": ["one", "two"], "tags": ["rock"], "split": "test"},
    {"path": "y.mp3", "caption": "three", "split": "train"},
    {"path": "y.mp3", "caption": "four", "split": "test"},  # One clip in two splits: which is unknowable.
  ]
  (root / "meta.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
  out = tmp_path / "corpus"
  prepare("--source", "folder", "--input", str(root), "--metadata", str(root / "meta.jsonl"), "--output", str(out))
  assert corpus_records(out, "test")["x.wav"]["captions"] == ["one", "two"]
  assert corpus_rejects(out) == {"y.mp3": "bad metadata"}
  reject = json.loads((out / records.REJECTS_FILE).read_text())
  assert reject["detail"] == "meta.jsonl puts 'y.mp3' in different splits (row 2 train, row 3 test)"


def test_a_file_converted_as_its_rejection_says_is_read_by_the_rerun(tmp_path):
  """An .m4a is rejected with `ffmpeg -i x.m4a x.flac`; the metadata still names the .m4a, so the
  re-run after converting rejected it again (and kept its shard: the .m4a had not changed)."""
  root = tmp_path / "music"
  root.mkdir()
  for name in ("a", "b", "c"):
    soundfile.write(root / f"{name}.wav", tone(1.2, RATE), RATE)
  (root / "live.m4a").write_bytes(b"\0\0\0\x20ftypM4A " + bytes(64))
  (root / "metadata.csv").write_text(
    "path,caption,split\n" + "".join(f"{n},{n} song,train\n" for n in ("a.wav", "b.wav", "c.wav", "live.m4a"))
  )
  out = tmp_path / "corpus"
  prepare("--source", "folder", "--input", root, "--output", out)
  assert corpus_rejects(out) == {"live.m4a": "unreadable"}
  soundfile.write(root / "live.flac", tone(1.2, RATE, freq=330.0), RATE)
  prepare("--source", "folder", "--input", root, "--output", out)
  assert corpus_rejects(out) == {} and corpus_records(out, "train")["live.m4a"]["captions"] == ["live.m4a song"]


def test_folder_metadata_from_a_spreadsheet_with_semicolons_or_a_json_list(tmp_path):
  """Spreadsheets of locales with decimal commas save CSV with `;`: read as one column, it had no
  'path'. A JSON list of objects (`metadata.json`) was read as CSV."""
  (tmp_path / "metadata.csv").write_text('path;caption;tags\n"a.wav";"Loud, at 0,5 s";x,y\nb.wav;Soft;\n')
  (tmp_path / "metadata.json").write_text(json.dumps([{"path": "a.wav", "caption": "Loud, at 0,5 s", "tags": "x,y"}]))
  for name in ("metadata.csv", "metadata.json"):
    items = [i for s in folder.list_items(tmp_path, seed=0, metadata=str(tmp_path / name)).splits.values() for i in s]
    assert (items[0].id, items[0].captions, items[0].tags) == ("a.wav", ("Loud, at 0,5 s",), ("x", "y")), name
  (tmp_path / "metadata.csv").write_text("path,description\na.wav,Loud\n")  # Every caption would be empty.
  with pytest.raises(UserError, match=r"has no 'caption' column \(columns: \['description', 'path'\]\); name it"):
    folder.list_items(tmp_path, seed=0)
  (tmp_path / "metadata.json").write_text(json.dumps({"path": "a.wav"}))
  with pytest.raises(UserError, match=r"metadata.json holds a JSON dict; write a list of objects, one per row"):
    folder.list_items(tmp_path, seed=0, metadata=str(tmp_path / "metadata.json"))


def test_source_errors_are_one_line(tmp_path):
  (tmp_path / "my_music").mkdir()
  command = [sys.executable, "-m", "mclap.data.prepare", "--source", "folder", "--input", str(tmp_path / "my_musi")]
  result = subprocess.run([*command, "--output", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode != 0 and result.stderr.strip().splitlines()[-1] == (
    f"error: {tmp_path / 'my_musi'} does not exist; did you mean --input {tmp_path / 'my_music'}? "
    "Else --input must name a folder"
  )
  # An option of another dataset (GTZAN has no subsets) is refused, not ignored.
  command = [sys.executable, "-m", "mclap.prepare", "--source", "gtzan", "--subset", "top50", "--input", str(tmp_path)]
  result = subprocess.run([*command, "--output", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode != 0 and result.stderr.strip().splitlines()[-1] == (
    "error: --source=gtzan does not read --subset (its options among these: --split_lists)"
  )
  command[4:7] = ["folder", "--waveform_keep_longer", "--seed=0"]  # Padding and keeping apply to a cut only.
  result = subprocess.run([*command, "--output", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode != 0 and result.stderr.strip().splitlines()[-1] == (
    "error: --waveform_keep_longer without --waveform_crop_seconds S: nothing is cut; add it, or leave it out"
  )


def test_every_source_lists_with_exactly_the_options_it_declares():
  for name, source in REGISTRY.items():
    parameters = inspect.signature(source.list_items).parameters
    assert list(parameters)[0] == "root" and set(list(parameters)[1:]) == set(source.options), name


def test_gtzan_genres_labels_and_split_lists(tmp_path):
  root = tmp_path / "gtzan"
  genres = ["blues", "jazz", "rock"]
  for g, genre in enumerate(genres):
    (root / "genres" / genre).mkdir(parents=True)
    for n in range(3):
      soundfile.write(root / "genres" / genre / f"{genre}.{n:05d}.wav", tone(1.5, 22050, freq=200 + 100 * g), 22050)
  (root / "genres/jazz/jazz.00054.wav").write_bytes(b"RIFF\x00")  # GTZAN's known corrupt file.
  out = tmp_path / "all"
  prepare("--source", "gtzan", "--input", str(root), "--output", str(out))
  test = corpus_records(out, "test")
  assert len(test) == 9 and corpus_rejects(out) == {"jazz/jazz.00054.wav": "unreadable"}
  assert test["rock/rock.00002.wav"]["label"] == 2 and test["rock/rock.00002.wav"]["tags"] == ["rock"]
  assert test["blues/blues.00000.wav"]["captions"] == []  # Tagging sets need no captions.
  info = records.read_info(out)
  assert info["label_names"] == genres and info["tags"] == genres

  lists = {
    "train": ["blues/blues.00000.wav", "jazz.00001.wav"],
    "test": ["genres/rock/rock.00000.wav", "rock/rock.00009.wav"],
  }
  args = []
  for split, lines in lists.items():
    (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    args.append(f"{split}={tmp_path / f'{split}.txt'}")
  out = tmp_path / "filtered"
  result = prepare(
    "--source", "gtzan", "--input", str(root / "genres"), "--output", str(out), "--split_lists", ",".join(args)
  )  # fmt: skip
  assert "left out 7 by split lists" in result.stderr  # 10 files, 3 of them listed.
  assert set(corpus_records(out, "train")) == {"blues/blues.00000.wav", "jazz/jazz.00001.wav"}
  assert set(corpus_records(out, "test")) == {"rock/rock.00000.wav"}
  assert corpus_rejects(out) == {"rock/rock.00009.wav": "missing file"}
  assert records.read_info(out)["left_out_by_split_lists"] == 10 - 3


def test_mel_settings_from_a_training_config_and_flags(tmp_path):
  out = tmp_path / "corpus"
  args = ["--source", "synthetic", "--num_clips", "64", "--clip_seconds", "0.5", "--num_workers", "0"]
  args += ["--output", str(out), "--config", str(ROOT / "configs/muscall.py:demo"), "--mel.fmax", "7000"]
  subprocess.run([sys.executable, "-m", "mclap.data.prepare", *args], cwd=ROOT, check=True, capture_output=True)
  mel = records.read_info(out)["mel"]
  assert mel["n_mels"] == 64 and mel["fmax"] == 7000.0  # From the demo config, then the flag.


def test_a_gtzan_folder_one_level_off_names_the_right_one(tmp_path):
  """--input one level above the dataset: its folders are not genres and hold no clips."""
  root = tmp_path / "downloads"
  (root / "gtzan/genres/jazz").mkdir(parents=True)
  soundfile.write(root / "gtzan/genres/jazz/jazz.00000.wav", tone(1.5, 22050), 22050)
  (root / "papers").mkdir()
  with pytest.raises(UserError, match=f"did you mean --input {root / 'gtzan'}"):
    gtzan.list_items(root, split_lists={})
  kaggle = tmp_path / "kaggle/Data/genres_original/jazz"  # The Kaggle copy's layout.
  kaggle.mkdir(parents=True)
  soundfile.write(kaggle / "jazz.00000.wav", tone(1.5, 22050), 22050)
  assert [i.id for i in gtzan.list_items(tmp_path / "kaggle/Data", split_lists={}).splits["test"]] == [
    "jazz/jazz.00000.wav"
  ]
  with pytest.raises(UserError, match=f"did you mean --input {tmp_path / 'kaggle/Data'}"):
    gtzan.list_items(tmp_path / "kaggle", split_lists={})
