"""Prepare a corpus: `python -m mclap.prepare --source S --output DIR [--input DIR]` (or `mclap.data.prepare`).

Turns a source into ArrayRecord shards of log-mels (or, `--source features`, precomputed audio
features) + captions + tags with `dataset_info.json` and `rejects.jsonl` (see
`mclap.data.records`). Parallel, resumable shard by shard: re-running the same command finishes an
interrupted job. Mel settings come from `--mel.*` flags, on top of
a training config's `data.mel` if `--config` names one.
"""

from __future__ import annotations

import functools
import pathlib

from absl import flags
from ml_collections import config_flags

from mclap import cli, paths
from mclap.data import mel as mel_lib
from mclap.errors import UserError
from mclap.prepare import decode, features_source, synthetic, tfds_source, writer
from mclap.prepare.listing import Listing, check_files_exist, read_converted
from mclap.prepare.sources import REGISTRY

_SOURCE = flags.DEFINE_string(
  "source",
  None,
  f"Data source: synthetic, {', '.join(REGISTRY)}, features (precomputed audio features), or tfds:<name> (a "
  "dataset in the TFDS data dir --input).",
  required=True,
)
# Options that only some recorded datasets read (each declares its own in `sources.REGISTRY`).
_SELECTIVE = ("metadata", "audio_dir", "subset", "fold", "split_lists")


def _readers(option: str) -> str:
  return ", ".join(name for name, source in REGISTRY.items() if option in source.options)


_INPUT = flags.DEFINE_string("input", None, "Source directory (every source but synthetic).")
_OUTPUT = flags.DEFINE_string("output", None, "Corpus directory to write.", required=True)
_METADATA = flags.DEFINE_string(
  "metadata",
  "",
  f"{_readers('metadata')}: the metadata file, if not the default one in --input.",
)
_AUDIO_DIR = flags.DEFINE_string(
  "audio_dir", "", f"{_readers('audio_dir')}: the audio folder, if not the source's default under --input."
)
_SUBSET = flags.DEFINE_string(
  "subset", "", "mtg_jamendo: genre|moodtheme|instrument|top50|all; mtat: top50|all; song_describer: all|valid."
)
_FOLD = flags.DEFINE_integer(
  "fold", None, "mtg_jamendo: the official split-N (default 0); tinysol: the fold kept as test (default: all test)."
)
_MAX_SECONDS = flags.DEFINE_float(
  "max_seconds", 600.0, "Keep at most this much of each file (read in blocks, so a longer file costs no more)."
)
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 1.0, "Reject files shorter than this.")
_SPLIT_LISTS = flags.DEFINE_list(
  "split_lists", [], "gtzan, mtat: split=FILE pairs, e.g. train=a.txt,validation=b.txt,test=c.txt (text or .npy)."
)
_WAVEFORM_CROP = flags.DEFINE_float(
  "waveform_crop_seconds",
  0.0,
  "Store the log-mel of each file's central S seconds of samples (zero-padded when shorter), not of the whole "
  "file: the clips the original MusCALL evaluates, for evaluating models imported from it (their bundles crop "
  "the waveform). Such a corpus is for evaluation: training crops from it have no room to move. 0: whole files.",
)
_WAVEFORM_PAD = flags.DEFINE_enum(
  "waveform_pad",
  "zeros",
  ["zeros", "repeat"],
  "With --waveform_crop_seconds: pad shorter files with zeros (MusCALL), or repeat them whole first (LAION-CLAP).",
)
_WAVEFORM_KEEP_LONGER = flags.DEFINE_bool(
  "waveform_keep_longer",
  False,
  "With --waveform_crop_seconds: keep longer files whole, padding only shorter ones: the input of fused CLAP "
  "models, which view the whole clip beside windows of that length.",
)
_FEATURES_FRAME_RATE = flags.DEFINE_float(
  "features_frame_rate",
  None,
  "features: frames per second of frame-level feature files [frames, dim] (the extractor's hop; default: the "
  "features.json beside them, which mclap.embed --features_out writes). Leave out for one vector per clip.",
)
_NPY_RATE = flags.DEFINE_integer("npy_sample_rate", 16000, "Sample rate of .npy waveforms (MusCALL: 16000).")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "Worker processes (default: all cores).")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 256, "Records per shard (the unit of resumption).")
_ITEM_TIMEOUT = flags.DEFINE_float(
  "item_timeout", 300.0, "Seconds a worker may take for one file before it is rejected as hung (workers > 0)."
)
_TFDS_CAPTION = flags.DEFINE_string(
  "tfds_caption", "", "tfds: the text feature to use as captions (default: one named caption(s)/text/description)."
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Replace a corpus that --output holds from other settings (else prepare refuses)."
)
_RETRY_REJECTS = flags.DEFINE_bool(
  "retry_rejects", False, "Try every rejected item again (a re-run retries those whose file changed anyway)."
)
_ALLOW_REJECTS = flags.DEFINE_bool(
  "allow_rejects", False, "Keep going when most items fail for one reason (else prepare stops with it)."
)
_MEL = cli.define_config_dict("mel", mel_lib.default_mel_config, "Log-mel settings.")
_MEL_PRESET = flags.DEFINE_enum(
  "mel_preset",
  "mclap",
  list(mel_lib.PRESETS),
  "Mel settings to start from: mclap's, or muscall_torchaudio (original MusCALL checkpoints' front end).",
)
_CONFIG = flags.DEFINE_string(
  "config", "", "Training config (path.py[:arg]) whose data.mel the corpus gets; --mel.* flags still override."
)
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 2000, "synthetic: number of clips.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed: the synthetic corpus, and hashed splits of rows without one.")
_CLIP_SECONDS = flags.DEFINE_float("clip_seconds", 10.0, "synthetic: clip length in seconds.")


def _waveform_cut() -> decode.WaveformCut | None:
  """The cut the `--waveform_*` flags ask for (None: whole files); pad or keep without a cut is a mistake."""
  if _WAVEFORM_CROP.value < 0:
    raise UserError(f"--waveform_crop_seconds={_WAVEFORM_CROP.value:g}; use the model's crop length or 0 (whole files)")
  if not _WAVEFORM_CROP.value:
    if given := [f"--{f.name}" for f in (_WAVEFORM_PAD, _WAVEFORM_KEEP_LONGER) if flags.FLAGS[f.name].present]:
      it = "them" if len(given) > 1 else "it"
      cut = "--waveform_crop_seconds S: nothing is cut"
      raise UserError(f"{' and '.join(given)} without {cut}; add it, or leave {it} out")
    return None
  return decode.WaveformCut(_WAVEFORM_CROP.value, _WAVEFORM_PAD.value, _WAVEFORM_KEEP_LONGER.value)


def _synthetic(mel_config: dict):
  if _WAVEFORM_CROP.value:
    raise UserError("--waveform_crop_seconds is for corpora of recordings (audio sources, tfds:<name>), not synthetic")
  splits = synthetic.plan_clips(_NUM_CLIPS.value, _SEED.value, _CLIP_SECONDS.value)
  work_fn = synthetic.make_record_fn(mel_config)
  extra = {
    "label_names": synthetic.LABEL_NAMES,
    "synthetic": {"seed": _SEED.value, "clip_seconds": _CLIP_SECONDS.value},
  }
  return Listing(splits, extra), work_fn


# What each source needs that is not a recorded dataset of `sources.REGISTRY`.
LAYOUTS = {
  "synthetic": "enough clips for a stratified train/validation/test split of 8 instruments: --num_clips 64 or more",
  "features": features_source.LAYOUT,
  **{name: source.layout for name, source in REGISTRY.items()},
}


def _recorded(name: str, mel_config: dict, cut: decode.WaveformCut | None):
  """A recorded dataset: list its items here, decode them in the workers."""
  source = REGISTRY[name]
  if not _INPUT.value:
    raise UserError(f"--source={name} needs --input DIR")
  root = pathlib.Path(_INPUT.value)
  if not root.is_dir():
    raise UserError(paths.not_found(root, "a folder", pathlib.Path.is_dir, "--input must name a folder", "--input"))
  settings = decode.DecodeSettings(
    tuple(sorted(mel_config.items())), _MAX_SECONDS.value, _MIN_SECONDS.value, _NPY_RATE.value
  )
  values = dict(
    seed=_SEED.value,
    metadata=_METADATA.value,
    audio_dir=_AUDIO_DIR.value,
    subset=_SUBSET.value,
    fold=_FOLD.value,
    split_lists=_split_lists(),
  )
  listing = read_converted(source.list_items(root, **{option: values[option] for option in source.options}))
  listing.extra["input"] = str(root.absolute())
  return listing, decode.work_function(decode.decode_record, settings, cut)


def _check_options(name: str) -> None:
  """An option the source does not read is a mistake (meant for another dataset, or mistyped)."""
  options = REGISTRY[name].options if name in REGISTRY else ("metadata",) if name == "features" else ()
  takes = [o for o in options if o in _SELECTIVE]
  if given := [o for o in _SELECTIVE if flags.FLAGS[o].present and o not in takes]:
    raise UserError(
      f"--source={name} does not read {', '.join(f'--{o}' for o in given)} "
      f"(its options among these: {', '.join(f'--{o}' for o in takes) or 'none'})"
    )


def _features():
  """Feature files: listed with their captions, loaded and checked in the workers."""
  if not _INPUT.value or not pathlib.Path(_INPUT.value).is_dir():
    raise UserError(f"--source=features needs --input DIR, the folder of {features_source.LAYOUT}")
  if given := [f"--{name}" for name in ("waveform_crop_seconds", "config", "mel_preset") if flags.FLAGS[name].present]:
    raise UserError(f"--source=features stores the feature files as they are: {', '.join(given)} does not apply")
  root = pathlib.Path(_INPUT.value)
  listing, work_fn, info = features_source.list_items(
    root, seed=_SEED.value, metadata=_METADATA.value, frame_rate=_FEATURES_FRAME_RATE.value
  )
  listing.extra["input"] = str(root.absolute())
  return listing, work_fn, info


def _tfds(mel_config: dict, cut: decode.WaveformCut | None):
  return tfds_source.list_items(
    _SOURCE.value,
    _INPUT.value or "",
    mel_config,
    _MAX_SECONDS.value,
    _MIN_SECONDS.value,
    _TFDS_CAPTION.value,
    cut,
  )


def _split_lists() -> dict[str, str]:
  pairs = [entry.partition("=") for entry in _SPLIT_LISTS.value]
  if bad := [f"{name}{eq}{path}" for name, eq, path in pairs if not (eq and name and path)]:
    raise UserError(f"--split_lists entries must be split=FILE, got {bad}")
  return {name: path for name, _, path in pairs}


def _mel_config() -> dict:
  """The `--mel.*` flags, on top of the training config's `data.mel` when `--config` names one,
  or of `--mel_preset`, so that the corpus is made for the model that will read it."""
  if not _CONFIG.value and _MEL_PRESET.value == "mclap":
    return _MEL.value.to_dict()
  mel = cli.load_config(_CONFIG.value).data.mel if _CONFIG.value else mel_lib.PRESETS[_MEL_PRESET.value]()
  mel.update_from_flattened_dict(config_flags.get_override_values(flags.FLAGS["mel"]))
  return mel.to_dict()


def main(argv):
  del argv
  is_tfds = _SOURCE.value.startswith("tfds:")
  if _SOURCE.value not in LAYOUTS and not is_tfds:
    raise UserError(f"unknown --source={_SOURCE.value}; choose one of: {', '.join(LAYOUTS)}, tfds:<name>")
  _check_options(_SOURCE.value)
  if _FEATURES_FRAME_RATE.present and _SOURCE.value != "features":
    raise UserError(f"--features_frame_rate is for --source=features, not --source={_SOURCE.value}")
  cut = _waveform_cut()
  if _SOURCE.value == "features":
    listing, work_fn, features = _features()
    made_of = {"features": features}
  else:
    mel_config = _mel_config()
    made_of = {"mel_config": mel_config}
    if is_tfds:
      listing, work_fn = _tfds(mel_config, cut)
    elif _SOURCE.value == "synthetic":
      listing, work_fn = _synthetic(mel_config)
    else:
      listing, work_fn = _recorded(_SOURCE.value, mel_config, cut)
  empty = [name for name, items in listing.splits.items() if not items]
  if empty or not listing.splits:
    where = f" in {_INPUT.value}" if _INPUT.value else ""
    expected = f": it expects {LAYOUTS[_SOURCE.value]}" if _SOURCE.value in LAYOUTS else ""
    what = f"for split(s) {', '.join(empty)}" if empty else "at all"
    raise UserError(f"--source={_SOURCE.value} found no items {what}{where}{expected}")
  if cut:
    listing.extra.update(cut.info())
  writer.write_corpus(
    _OUTPUT.value,
    listing.splits,
    work_fn,
    **made_of,
    source=_SOURCE.value,
    extra_info=listing.extra,
    require_captions=listing.require_captions,
    num_workers=_NUM_WORKERS.value,
    shard_size=_SHARD_SIZE.value,
    item_timeout=_ITEM_TIMEOUT.value,
    overwrite=_OVERWRITE.value,
    retry_rejects=_RETRY_REJECTS.value,
    allow_rejects=_ALLOW_REJECTS.value,
    check_items=functools.partial(check_files_exist, listing.file_root),
  )


if __name__ == "__main__":
  cli.run(main)
