"""The public datasets' own layouts, rebuilt in miniature with audio synthesized here."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from conftest import ROOT, corpus_records, corpus_rejects, prepare, tone

from mclap.data import records
from mclap.errors import UserError
from mclap.prepare import listing
from mclap.prepare.sources import musiccaps, tinysol

RATE = 16000


def write(path, seconds=1.5, rate=22050, freq=440.0, channels=1):
  path.parent.mkdir(parents=True, exist_ok=True)
  soundfile.write(path, tone(seconds, rate, channels, freq), rate)


def frames(seconds):
  return 1 + int(seconds * RATE) // 512


def test_musiccaps_segments_splits_and_aspects(tmp_path):
  root = tmp_path / "musiccaps"
  write(root / "audio/long_rec123.flac", seconds=6.0, rate=44100, channels=2)  # Whole recording.
  write(root / "audio/nested/precut12345.mp3", seconds=2.0, rate=48000)  # Clip already cut out.
  write(root / "audio/evalclip123_0_2.ogg", seconds=2.0, rate=32000)  # Named <ytid>_<start>_<end>.
  rows = [
    "ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,is_audioset_eval",
    "long_rec123,1,3,/m/x,\"['pop', 'mellow piano']\",\"A mellow piano. Soft drums join later.\",1,False,False",
    "precut12345,30,32,/m/x,\"['rock']\",Loud guitars.,2,False,False",
    "evalclip123,0,2,/m/x,\"['jazz']\",A jazz trio.,3,False,True",
    "absent,0,10,/m/x,\"['x']\",Never downloaded.,4,False,False",
  ]
  (root / "musiccaps-public.csv").write_text("\n".join(rows) + "\n")
  out = tmp_path / "corpus"
  prepare("--source", "musiccaps", "--input", root, "--output", out, "--seed", "1")
  found = {split: corpus_records(out, split) for split in ("train", "validation", "test")}
  assert set(found["test"]) == {"evalclip123"}
  for ytid in ("long_rec123", "precut12345"):
    expected = listing.hashed_split(ytid, 1, (("train", 0.9), ("validation", 0.1)))
    assert ytid in found[expected]
  rec = {**found["train"], **found["validation"]}
  assert rec["long_rec123"]["mel"].shape == (32, frames(2.0))  # [1 s, 3 s) of the 6 s recording.
  assert abs(rec["precut12345"]["mel"].shape[1] - frames(2.0)) <= 3  # MP3 padding.
  assert rec["long_rec123"]["captions"] == ["A mellow piano. Soft drums join later."]
  assert rec["long_rec123"]["tags"] == ["pop", "mellow piano"]
  assert corpus_rejects(out) == {"absent": "missing file"}


def test_musiccaps_clips_downloaded_as_m4a_are_found_and_a_converted_one_is_preferred(tmp_path):
  # yt-dlp leaves .m4a or .webm unless told to convert: such clips were rejected as missing files
  # (the job stopped saying no listed file exists), not with the command that converts them.
  root = tmp_path / "musiccaps"
  for name in ("onlym4a0001.m4a", "converted01.m4a", "converted01.flac", "prefixed001.webm", "prefixed001_0_10.wav"):
    (root / "audio" / name).parent.mkdir(parents=True, exist_ok=True)
    (root / "audio" / name).write_bytes(b"")
  rows = ["ytid,start_s,end_s,caption"] + [f"{y},0,10,A clip." for y in ("onlym4a0001", "converted01", "prefixed001")]
  (root / "musiccaps-public.csv").write_text("\n".join(rows) + "\n")
  found = musiccaps.list_items(root, seed=0)
  paths = {item.id: pathlib.Path(item.path).name for items in found.splits.values() for item in items}
  assert paths == {
    "onlym4a0001": "onlym4a0001.m4a",
    "converted01": "converted01.flac",
    "prefixed001": "prefixed001_0_10.wav",
  }


def test_song_describer_keeps_a_tracks_captions_together(tmp_path):
  root = tmp_path / "sdd"
  write(root / "audio/00/1000.2min.mp3", rate=44100, channels=2)
  write(root / "audio/01/2001.2min.mp3", rate=44100, freq=330.0)
  header = "caption_id,track_id,caption,is_valid_subset,familiarity,artist_id,album_id,path,duration,"
  header += "genre,instrument,mood/theme"
  rows = [
    header,
    "1,1000,Bright synth pop.,True,1,7,8,00/1000.mp3,120,\"['pop']\",\"['synthesizer']\",\"['happy']\"",
    "2,1000,An upbeat electronic song with synths.,False,2,7,8,00/1000.mp3,120,\"['pop']\",[synthesizer],\"['happy']\"",
    "3,2001,Slow ambient drones.,False,0,9,9,01/2001.mp3,130,\"['ambient']\",[],\"['calm']\"",
    "4,3002,Gone.,True,0,9,9,02/3002.mp3,130,[],[],[]",
  ]
  (root / "song_describer.csv").write_text("\n".join(rows) + "\n")
  out = tmp_path / "all"
  prepare("--source", "song_describer", "--input", root, "--output", out)
  test = corpus_records(out, "test")
  assert test["1000"]["captions"] == ["Bright synth pop.", "An upbeat electronic song with synths."]
  assert test["1000"]["tags"] == ["genre---pop", "instrument---synthesizer", "mood/theme---happy"]
  assert set(test) == {"1000", "2001"} and corpus_rejects(out) == {"3002": "missing file"}
  info = records.read_info(out)
  assert info["tag_text"]["mood/theme---calm"] == "calm"

  out = tmp_path / "valid"
  prepare("--source", "song_describer", "--input", root, "--output", out, "--subset", "valid")
  assert corpus_records(out, "test")["1000"]["captions"] == ["Bright synth pop."]
  assert set(corpus_records(out, "test")) == {"1000"}
  assert records.read_info(out)["left_out_not_in_subset"] == 2


def _mtat_tree(root):
  """52 tags: t00..t49 on every tagged clip, t50/t51 on one clip each (outside the top 50)."""
  names = [f"t{i:02d}" for i in range(52)]
  clips = [
    ("0/a-clip-0-29.mp3", set(names[:50]) | {"t50"}),
    ("c/b-clip-0-29.mp3", set(names[:50])),
    ("d/c-clip-0-29.mp3", set(names[:49]) | {"t51"}),
    ("f/d-clip-0-29.mp3", {"t51"}),  # Only a tag outside the top 50.
    ("e/missing-0-29.mp3", {"t00"}),
  ]
  lines = ["\t".join(f'"{c}"' for c in ["clip_id", *names, "mp3_path"])]
  for n, (path, tags) in enumerate(clips):
    if "missing" not in path:
      write(root / path, rate=16000, freq=300.0 + 100 * n)
    lines.append("\t".join(f'"{v}"' for v in [str(n + 2), *("1" if t in tags else "0" for t in names), path]))
  (root / "annotations_final.csv").write_text("\n".join(lines) + "\n")
  return names


def test_mtat_top50_folder_split_and_split_lists(tmp_path):
  root = tmp_path / "mtat"
  names = _mtat_tree(root)
  out = tmp_path / "folders"
  prepare("--source", "mtat", "--input", root, "--output", out)
  info = records.read_info(out)
  assert info["tags"] == sorted(names[:49] + ["t49"]) and info["left_out_without_tags"] == 1
  assert set(corpus_records(out, "train")) == {"0/a-clip-0-29.mp3"}
  assert set(corpus_records(out, "validation")) == {"c/b-clip-0-29.mp3"}
  test = corpus_records(out, "test")
  assert test["d/c-clip-0-29.mp3"]["tags"] == names[:49]
  assert corpus_rejects(out) == {"e/missing-0-29.mp3": "missing file"}

  np.save(tmp_path / "train.npy", np.array(["2\t0/a-clip-0-29.mp3", "3\tc/b-clip-0-29.mp3"]))
  (tmp_path / "test.txt").write_text("4\n5\n")  # Clip ids.
  out = tmp_path / "lists"
  lists = f"train={tmp_path / 'train.npy'},test={tmp_path / 'test.txt'}"
  prepare("--source", "mtat", "--input", root, "--output", out, "--split_lists", lists, "--subset", "all")
  assert set(corpus_records(out, "train")) == {"0/a-clip-0-29.mp3", "c/b-clip-0-29.mp3"}
  assert corpus_records(out, "test")["f/d-clip-0-29.mp3"]["tags"] == ["t51"]
  assert records.read_info(out)["tags"] == names


def test_mtg_jamendo_official_split_files(tmp_path):
  root = tmp_path / "mtg-jamendo-dataset"
  split_dir = root / "data/splits/split-1"
  split_dir.mkdir(parents=True)
  header = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"
  tracks = {
    "train": [("track_0000214", "14/214.mp3", ["mood/theme---happy", "mood/theme---film"])],
    "validation": [("track_0000315", "15/315.mp3", ["mood/theme---sad"])],
    "test": [("track_0000416", "16/416.mp3", ["mood/theme---happy"]), ("track_0000517", "17/517.mp3", ["x"])],
  }
  for split, rows in tracks.items():
    lines = [header] + [f"{t}\tartist_1\talbum_1\t{p}\t200.0\t" + "\t".join(tags) for t, p, tags in rows]
    (split_dir / f"autotagging_moodtheme-{split}.tsv").write_text("\n".join(lines) + "\n")
  write(root / "audio/14/214.mp3", rate=44100, channels=2)
  write(root / "audio/15/315.low.mp3", rate=44100)  # The low-quality download.
  (root / "audio/16").mkdir()
  np.save(root / "audio/16/416.npy", np.zeros(1))  # Not what the TSV names: missing.
  out = tmp_path / "corpus"
  prepare("--source", "mtg_jamendo", "--input", root, "--output", out, "--subset", "moodtheme", "--fold", "1")
  assert corpus_records(out, "train")["track_0000214"]["tags"] == ["mood/theme---happy", "mood/theme---film"]
  assert set(corpus_records(out, "validation")) == {"track_0000315"}
  assert corpus_rejects(out) == {"track_0000416": "missing file", "track_0000517": "missing file"}
  info = records.read_info(out)
  assert info["tags"] == ["mood/theme---film", "mood/theme---happy", "mood/theme---sad", "x"]
  assert info["tag_text"]["mood/theme---film"] == "film" and info["subset"] == "moodtheme"


def test_tinysol_labels_and_folds(tmp_path):
  root = tmp_path / "tinysol"
  header = "Path,Fold,Family,Instrument (abbr.),Instrument (in full),Technique (abbr.),Technique (in full),Pitch"
  rows = [
    (header, None),
    ("Brass/Trumpet_C/ordinario/TpC-ord-C4-ff-N-N.wav,0,Brass,TpC,Trumpet in C,ord,ordinario,C4", 523.0),
    ("Strings/Violin/ordinario/Vn-ord-A4-pp-1c-N.wav,1,Strings,Vn,Violin,ord,ordinario,A4", 440.0),
    ("Strings/Violin/ordinario/Vn-ord-A5-pp-1c-N.wav,0,Strings,Vn,Violin,ord,ordinario,A5", 880.0),
  ]
  for line, freq in rows[1:]:
    write(root / "TinySOL" / line.split(",")[0], rate=44100, freq=freq)
  (root / "TinySOL_metadata.csv").write_text("\n".join(line for line, _ in rows) + "\n")
  out = tmp_path / "zero_shot"
  prepare("--source", "tinysol", "--input", root, "--output", out)
  test = corpus_records(out, "test")
  assert len(test) == 3 and records.read_info(out)["label_names"] == ["Trumpet in C", "Violin"]
  assert test["Strings/Violin/ordinario/Vn-ord-A4-pp-1c-N.wav"]["label"] == 1
  assert test["Strings/Violin/ordinario/Vn-ord-A4-pp-1c-N.wav"]["tags"] == ["Violin", "Strings"]
  out = tmp_path / "fold0"
  prepare("--source", "tinysol", "--input", root, "--output", out, "--fold", "0")
  assert set(corpus_records(out, "train")) == {"Strings/Violin/ordinario/Vn-ord-A4-pp-1c-N.wav"}
  assert len(corpus_records(out, "test")) == 2
  assert json.loads((out / records.INFO_FILE).read_text())["splits"]["train"]["count"] == 1


def test_tinysol_in_mirdata_layout_and_with_metadata_flag(tmp_path):
  """mirdata keeps TinySOL_metadata.csv in annotation/ and the audio in audio/; --metadata names
  any other place (it was ignored by this source)."""
  header = "Path,Fold,Family,Instrument (abbr.),Instrument (in full)"
  row = "Strings/Violin/ordinario/Vn-ord-A4-pp-1c-N.wav,1,Strings,Vn,Violin"
  (tmp_path / "mirdata/annotation").mkdir(parents=True)
  (tmp_path / "mirdata/audio").mkdir()
  (tmp_path / "mirdata/annotation/TinySOL_metadata.csv").write_text(f"{header}\n{row}\n")
  [item] = tinysol.list_items(tmp_path / "mirdata").splits["test"]
  assert item.path == str(tmp_path / "mirdata/audio" / row.split(",")[0]) and item.tags == ("Violin", "Strings")
  (tmp_path / "elsewhere.csv").write_text(f"{header}\n{row.replace('Violin', 'Viola')}\n")
  [item] = tinysol.list_items(tmp_path / "mirdata", metadata=str(tmp_path / "elsewhere.csv")).splits["test"]
  assert item.tags == ("Viola", "Strings")


def test_tfds_dataset_with_audio_caption_and_label(tmp_path):
  data_dir = tmp_path / "tensorflow_datasets"
  build = subprocess.run([sys.executable, str(ROOT / "tests/tfds_tiny.py"), str(data_dir)], capture_output=True)
  assert build.returncode == 0, build.stderr.decode()[-2000:]
  out = tmp_path / "corpus"
  prepare("--source", "tfds:tiny_music", "--input", data_dir, "--output", out)
  by_caption = {r["captions"][0]: r for r in corpus_records(out, "train").values()}  # TFDS shuffles.
  assert set(by_caption) == {"clip number 0", "clip number 1"}
  assert by_caption["clip number 1"]["label"] == 1 and by_caption["clip number 1"]["tags"] == ["jazz"]
  assert by_caption["clip number 0"]["mel"].shape == (32, frames(1.5))
  assert [r["captions"] for r in corpus_records(out, "validation").values()] == [["clip number 3"]]
  assert list(corpus_rejects(out).values()) == ["silent"]
  info = records.read_info(out)
  assert info["label_names"] == ["blues", "jazz"] and info["tfds"]["name"] == "tiny_music"
  missing = subprocess.run(
    [sys.executable, "-m", "mclap.data.prepare", "--source", "tfds:no_such_set", "--input", str(data_dir)]
    + ["--output", str(tmp_path / "x")],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert missing.returncode != 0
  assert missing.stderr.strip().splitlines()[-1].startswith("error: cannot open TFDS dataset 'no_such_set'")


def test_tfds_pcm_scaling():
  from mclap.prepare import tfds_source

  np.testing.assert_allclose(tfds_source.to_float(np.array([16384, -32768], np.int64)), [0.5, -1.0])
  np.testing.assert_allclose(tfds_source.to_float(np.array([[2**30, 0]], np.int64)), [0.25])
  np.testing.assert_array_equal(tfds_source.to_float(np.array([0.25], np.float32)), [0.25])


def test_tfds_captions_come_only_from_description_features():
  """TFDS's gtzan has one text feature, `audio/filename`: a file name is not a caption."""
  from mclap.prepare import tfds_source

  Text = type("Text", (), {})  # noqa: N806  Stand-ins with TFDS's feature class names.
  Sequence = type("Sequence", (), {"feature": Text()})  # noqa: N806
  gtzan = {"audio": object(), "audio/filename": Text(), "label": object()}
  assert tfds_source.caption_feature(gtzan) == ""
  assert tfds_source.caption_feature(gtzan, "audio/filename") == "audio/filename"  # Asked for by name.
  with pytest.raises(UserError, match=r"not a text feature .*\['audio/filename'\]"):
    tfds_source.caption_feature(gtzan, "label")
  assert tfds_source.caption_feature({"id": Text(), "captions": Sequence()}) == "captions"
