"""Embed a music folder: `python -m mclap.embed --bundle B --audio_dir D --output E`.

Every audio file under D (WAV, FLAC, OGG, MP3, MusCALL .npy; by extension, any depth) is decoded,
turned into a log-mel as `prepare` does and embedded by the bundle's model into an index
(`mclap.serve.index`): embeddings, paths and durations. Files are decoded by `--num_workers` threads
while the model embeds; every `--part_size` files are saved as a part, so an interrupted job
(Ctrl-C, kill) resumes where it stopped when run again, and a re-run embeds only files added or
changed since (deleted ones leave the index). A folder moved elsewhere (renamed, or the library on
another disk) keeps its index: a re-run with the new `--audio_dir` follows it. Files that cannot be
used are listed in E/rejects.jsonl with the reason and skipped. A bundle over precomputed features
indexes a folder of feature files instead (`--features_dir D`: `.npy`/`.npz`, checked as `prepare
--source features` checks them).

`--corpus C --features_out F` writes frame-level features instead: the bundle's audio tower (frozen)
over crops of each record of the prepared corpus C every `--features_hop_seconds`, one `.npy`
`[frames, dim]` per record, with `metadata.jsonl` (captions, tags, split) and `features.json`
(dim, frame rate): the input of `prepare --source features --input F`. Resumable as well.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import pathlib
import sys
from typing import Any

import numpy as np
import tqdm
from absl import flags

import mclap
from mclap import cli, paths
from mclap.data import audio as audio_lib
from mclap.data import features as features_lib
from mclap.data import records
from mclap.errors import UserError
from mclap.serve import index as index_lib


def list_audio(audio_dir: pathlib.Path, suffixes: tuple[str, ...] = audio_lib.AUDIO_SUFFIXES) -> list[str]:
  """Files with `suffixes` (audio by default) under `audio_dir`, relative paths in sorted order."""
  if not audio_dir.is_dir():
    raise UserError(
      paths.not_found(audio_dir, "a folder", pathlib.Path.is_dir, "name a folder of music", "--audio_dir")
    )
  files = [p for p in audio_dir.rglob("*") if p.is_file()]
  found = sorted(str(p.relative_to(audio_dir)) for p in files if p.suffix.lower() in suffixes)
  other = collections.Counter()  # Audio libsndfile cannot decode: said, not silently left out.
  if suffixes == audio_lib.AUDIO_SUFFIXES:
    converted = {p.with_suffix("") for p in files if p.suffix.lower() in suffixes}  # Beside it, as told.
    other.update(
      p.suffix.lower()
      for p in files
      if p.suffix.lower() in audio_lib.OTHER_AUDIO_SUFFIXES and p.with_suffix("") not in converted
    )
  left_out = ", ".join(f"{n} {suffix}" for suffix, n in other.most_common())
  if not found:  # An index of nothing would "succeed": a wrong folder must not look like an empty one.
    held = f" (it holds {left_out}, which libsndfile does not decode: {audio_lib.CONVERT_HINT})" if other else ""
    raise UserError(
      f"no files ending in {', '.join(suffixes)} under {audio_dir}{held}; --audio_dir must name a folder of them"
    )
  if other:
    print(
      f"warning: left out {left_out} files under {audio_dir} (libsndfile does not decode them): "
      f"{audio_lib.CONVERT_HINT}",
      file=sys.stderr,
      flush=True,
    )
  return found


def _decode(
  model: mclap.serve.inference.Model, path: pathlib.Path, crops: int, crop: str
) -> tuple[np.ndarray | None, dict[str, Any]]:
  """(crops to embed, item) or (None, {"reason": ...}) for a file that cannot be used."""
  try:
    if model.features is not None:
      return model.feature_crops(path, crops), {}
    wave = model.waveform(path)
    return model.mel_crops(wave, crops, crop), {"seconds": round(len(wave) / model.sample_rate, 3)}
  except (audio_lib.AudioError, features_lib.FeatureError) as e:
    return None, {"reason": str(e)}
  except Exception as e:  # A decoder's own failure on a strange file: report it, keep going.
    return None, {"reason": f"failed: {type(e).__name__}: {e}"}


def _ahead(pool: concurrent.futures.Executor, fn, items: list, depth: int):
  """(item, fn(item)) in order, with up to `depth` calls running ahead in `pool`."""
  queue = collections.deque()
  for item in items:
    queue.append((item, pool.submit(fn, item)))
    if len(queue) > depth:
      done, future = queue.popleft()
      yield done, future.result()
  while queue:
    done, future = queue.popleft()
    yield done, future.result()


def _moved_here(old: pathlib.Path, index: index_lib.Index, files: list[str]) -> bool:
  """Whether the folder an index was built from was moved to the one holding `files`: it is gone,
  and at least half of the indexed files are here under the same names (a moved music library;
  files that kept their size and time are not embedded again)."""
  here = set(files)
  found = sum(item["path"] in here for item in index.items)
  return not old.exists() and found > 0 and 2 * found >= len(index.items)


def embed_folder(
  bundle: str | pathlib.Path,
  audio_dir: str | pathlib.Path,
  output: str | pathlib.Path,
  *,
  batch_size: int = 16,
  num_workers: int | None = None,
  part_size: int = 256,
  crops: int = 0,
  crop: str = "",
  max_seconds: float = 600.0,
  show_progress: bool = True,
  model: mclap.serve.inference.Model | None = None,
) -> dict[str, Any]:
  """Embeds the files of `audio_dir` (audio, or feature files for a features bundle) not yet in
  the index at `output`; returns index.json. `model`: the bundle already loaded (its own batch
  size and `max_seconds` then apply)."""
  audio_dir, output = pathlib.Path(audio_dir).absolute(), pathlib.Path(output)
  paths.check_not_file(output, "--output", index_lib.is_index)
  if others := index_lib.other_files(output):  # The music folder itself, a home directory.
    meant = paths.near(output, index_lib.is_index)
    fix = f"did you mean --output {meant[0]}? Else choose" if meant else "choose"
    raise UserError(
      f"{output} already holds files that are not an index's ({paths.few(others)}); {fix} a new or empty --output"
    )
  model = model or mclap.load(bundle, batch_size=batch_size, max_seconds=max_seconds)
  crops = crops or model.config.data.eval_crops
  crop = crop or model.crop
  if crop not in mclap.serve.inference.CROP_RULES:
    raise UserError(f"--crop={crop}; use one of {', '.join(mclap.serve.inference.CROP_RULES)}")
  kind = "feature" if model.features is not None else "audio"
  files = list_audio(audio_dir, features_lib.SUFFIXES if kind == "feature" else audio_lib.AUDIO_SUFFIXES)
  info = {
    "bundle": str(pathlib.Path(bundle).absolute()),
    "bundle_id": model.meta["id"],
    "dim": model.dim,
    "audio_dir": str(audio_dir),
    "crops": crops,
    "crop": crop,
    **({"features": model.features} if model.features is not None else {"mel": model.mel_config}),
  }
  output.mkdir(parents=True, exist_ok=True)
  previous = index_lib.existing(output)
  # What each file was when it was embedded or rejected: a file done as it is now is not done again.
  known = collections.defaultdict(list)
  for item in [*(previous.items if previous is not None else []), *index_lib.read_parts(output)[1]]:
    known[item["path"]].append(item.get("file_state"))
  for path, reject in index_lib.read_rejects(output).items():
    known[path].append(reject.get("file_state"))
  if previous is not None:
    before = {"crop": "mel", **previous.info}  # Indices written before the crop key cropped the mel.
    if before["audio_dir"] != info["audio_dir"] and _moved_here(pathlib.Path(before["audio_dir"]), previous, files):
      print(f"{before['audio_dir']} is gone and {audio_dir} holds its files: the index follows them there")
      before["audio_dir"] = info["audio_dir"]
    if before["bundle_id"] != info["bundle_id"]:  # A model trained on, or exported again to the same folder.
      now = "the one exported there since" if before["bundle"] == info["bundle"] else info["bundle"]
      raise UserError(
        f"{output} was built with the bundle {before['bundle']} (id {before['bundle_id']}), not {now} (id "
        f"{info['bundle_id']}); use a new --output for this bundle, or delete {output} to embed the folder again"
      )
    for key in ("audio_dir", "crops", "crop"):
      if before[key] != info[key]:
        raise UserError(
          f"{output} was built with {key} {before[key]!r}, not {info[key]!r}; use a new --output for "
          "another folder or crop setting"
        )
  states = {f: paths.file_state(audio_dir / f) for f in files}
  todo = [f for f in files if not any(index_lib.is_current(s, states[f]) for s in known.get(f, []))]
  changed, gone = sum(f in known for f in todo), len(known.keys() - states.keys())
  print(
    f"{len(files)} {kind} files under {audio_dir}: {len(todo)} to embed"
    + (f" ({changed} changed since)" if changed else "")
    + f", {len(files) - len(todo)} done before"
    + (f"; {gone} no longer there leave the index" if gone else "")
  )
  new_rejects, pending, part_embeddings, part_items = 0, [], [], []

  def embed_pending():
    if pending:
      part_embeddings.append(model.embed_mels([clip for clip, _ in pending]))
      part_items.extend(item for _, item in pending)
      pending.clear()

  def save_part():
    embed_pending()
    if part_items:
      index_lib.write_part(output, np.concatenate(part_embeddings), part_items)
      part_embeddings.clear()
      part_items.clear()

  # Decoders print notes on broken files (libmpg123: "Illegal Audio-MPEG-Header"): into a log, not
  # over the progress bar.
  with open(output / index_lib.DECODER_LOG, "ab") as log, audio_lib.stderr_into(log) as terminal:
    bar = tqdm.tqdm(total=len(todo), unit="file", disable=not show_progress, dynamic_ncols=True, file=terminal)
    try:
      # Threads decode ahead (NumPy, soxr and libsndfile release the GIL) while the model embeds.
      decode = lambda p: _decode(model, audio_dir / p, crops, crop)  # noqa: E731
      pool = concurrent.futures.ThreadPoolExecutor(num_workers or os.cpu_count())
      try:
        for path, (clip, item) in _ahead(pool, decode, todo, 2 * model.batch_size):
          if clip is None:
            index_lib.add_reject(output, path, item["reason"], states[path])
            new_rejects += 1
          else:
            pending.append((clip, {"path": path, **item, "file_state": states[path]}))
          if len(pending) == model.batch_size:
            embed_pending()
          if len(part_items) + len(pending) >= part_size:
            save_part()
          bar.update()
        save_part()
      finally:
        pool.shutdown(cancel_futures=True)  # On an interrupt, files not yet started are not decoded.
    except KeyboardInterrupt:
      bar.close()
      sys.exit(f"interrupted; the finished parts are kept in {output}. Run the same command to resume.")
    bar.close()
  info = index_lib.consolidate(output, info, states)
  print(
    f"index {output}: {info['count']} files ({len(todo) - new_rejects} new); rejected {new_rejects} new, "
    f"{len(index_lib.read_rejects(output))} in all (see {index_lib.REJECTS_FILE})"
  )
  return info


def write_features(
  bundle: str | pathlib.Path,
  corpus: str | pathlib.Path,
  output: str | pathlib.Path,
  *,
  hop_seconds: float = 1.0,
  batch_size: int = 16,
  show_progress: bool = True,
) -> dict[str, Any]:
  """Writes frame-level features of every record of a prepared corpus (see the module docstring);
  returns the `features.json` written. Records whose file exists already are skipped."""
  output = pathlib.Path(output)
  paths.check_not_file(output, "--features_out")
  model = mclap.load(bundle, batch_size=batch_size)
  info = records.read_info(corpus)
  if records.input_field(info) != "mel" or info["mel"] != model.mel_config:
    raise UserError(f"{corpus} was not prepared with the mel settings of {bundle}; prepare it with them (--mel.*)")
  hop_frames = max(1, int(round(hop_seconds * model.sample_rate / model.mel_config["hop_length"])))
  frame_rate = model.sample_rate / model.mel_config["hop_length"] / hop_frames
  output.mkdir(parents=True, exist_ok=True)
  splits = list(info["splits"])
  total = sum(info["splits"][s]["count"] for s in splits)
  if not total:
    raise UserError(f"{corpus} holds no records")
  rows, pending = [], []

  def flush():  # Each file is written whole (renamed when complete), so a re-run skips it.
    for (name, _), frames in zip(pending, model.tower_frames([mel for _, mel in pending], hop_frames)):
      with open(output / f"{name}.tmp", "wb") as f:
        np.save(f, frames.astype(np.float32))
      os.replace(output / f"{name}.tmp", output / name)
    pending.clear()

  interval = 0.5 if sys.stderr.isatty() else 30.0  # Keep logs of batch jobs short.
  with tqdm.tqdm(total=total, unit="record", disable=not show_progress, mininterval=interval) as bar:
    for split in splits:
      reader = records.CorpusReader(corpus, split)
      for index in range(len(reader)):
        record, name = reader[index], f"{split}-{index:06d}.npy"
        if not (output / name).is_file():
          pending.append((name, record["mel"].astype(np.float32)))
          if len(pending) == model.batch_size:
            flush()
        rows.append(dict(path=name, id=record["id"], caption=record["captions"], tags=record["tags"], split=split))
        bar.update()
    flush()
  dim = int(np.load(output / rows[0]["path"], mmap_mode="r").shape[1])
  header = {"dim": dim, "frame_rate": frame_rate, "bundle": str(pathlib.Path(bundle).absolute())}
  records.write_text_atomic(output / "metadata.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
  records.write_json_atomic(output / features_lib.HEADER_FILE, header)
  print(f"features of {len(rows)} records of {corpus} in {output}: dim {header['dim']}, {frame_rate:g} frames/s")
  return header


def main(argv):
  del argv
  f = flags.FLAGS
  if f.features_out:
    if not f.corpus or f.audio_dir or f.features_dir:
      raise UserError("--features_out writes features of a prepared corpus: give --corpus C (and no --*_dir)")
    write_features(f.bundle, f.corpus, f.features_out, hop_seconds=f.features_hop_seconds, batch_size=f.batch_size)
    return
  if bool(f.audio_dir) == bool(f.features_dir) or not f.output:
    raise UserError("give --audio_dir (or --features_dir for a bundle over precomputed features) and --output")
  model = mclap.load(f.bundle, batch_size=f.batch_size, max_seconds=f.max_seconds)
  if (model.features is not None) != bool(f.features_dir):
    wanted = "--features_dir (it embeds precomputed features)" if model.features is not None else "--audio_dir"
    raise UserError(f"{f.bundle} takes {wanted}")
  embed_folder(
    f.bundle,
    f.audio_dir or f.features_dir,
    f.output,
    num_workers=f.num_workers,
    part_size=f.part_size,
    crops=f.crops,
    crop=f.crop,
    model=model,
  )


if __name__ == "__main__":  # Flags defined here: the functions above import beside other jobs.
  flags.DEFINE_string("bundle", None, "Inference bundle (python -m mclap.export).", required=True)
  flags.DEFINE_string("audio_dir", None, "Folder of audio files (searched recursively).")
  flags.DEFINE_string("features_dir", None, "Folder of feature files (.npy/.npz), for a bundle over features.")
  flags.DEFINE_string("output", None, "Index directory to write or extend.")
  flags.DEFINE_string("corpus", None, "With --features_out: the prepared corpus whose records to take features of.")
  flags.DEFINE_string("features_out", None, "Write the bundle's frame-level audio features of --corpus here.")
  flags.DEFINE_float("features_hop_seconds", 1.0, "With --features_out: seconds between frames (crop starts).")
  flags.DEFINE_integer("batch_size", 16, "Clips per model call.")
  flags.DEFINE_integer("num_workers", None, "Decoding threads (default: all cores).")
  flags.DEFINE_integer("part_size", 256, "Files per saved part (the unit of resumption).")
  flags.DEFINE_integer("crops", 0, "Crops averaged per file (0: the bundle's; 1: the central crop).")
  flags.DEFINE_enum(
    "crop", "", ["", "mel", "waveform"], "Crop the log-mel or the waveform (default: the bundle's; see mclap.load)."
  )
  flags.DEFINE_float("max_seconds", 600.0, "Read at most this much of each file.")
  cli.run(main)
