"""Prepare a corpus: `python -m mclap.data.prepare --source S --output DIR [--input DIR]`.

Turns a source into ArrayRecord shards of log-mels + captions + tags with `dataset_info.json`
and `rejects.jsonl` (see `mclap.data.records`). Parallel, resumable shard by shard: re-running
the same command finishes an interrupted job. Mel settings come from `--mel.*` flags.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from mclap import cli
from mclap.data import mel as mel_lib
from mclap.data import synthetic, writer
from mclap.errors import UserError

_SOURCE = flags.DEFINE_string("source", None, "Data source: synthetic.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Corpus directory to write.", required=True)
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "Worker processes (default: all cores).")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 256, "Records per shard (the unit of resumption).")
_MEL = config_flags.DEFINE_config_dict("mel", mel_lib.default_mel_config(), "Log-mel settings.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 2000, "synthetic: number of clips.")
_SEED = flags.DEFINE_integer("seed", 0, "synthetic: seed; the corpus is a function of it.")
_CLIP_SECONDS = flags.DEFINE_float("clip_seconds", 10.0, "synthetic: clip length in seconds.")


def _synthetic(mel_config: dict):
  splits = synthetic.plan_clips(_NUM_CLIPS.value, _SEED.value, _CLIP_SECONDS.value)
  work_fn = synthetic.make_record_fn(mel_config)
  extra = {
    "label_names": synthetic.LABEL_NAMES,
    "synthetic": {"seed": _SEED.value, "clip_seconds": _CLIP_SECONDS.value},
  }
  return splits, work_fn, extra


SOURCES = {"synthetic": _synthetic}


def main(argv):
  del argv
  if _SOURCE.value not in SOURCES:
    raise UserError(f"unknown --source={_SOURCE.value}; choose one of: {', '.join(SOURCES)}")
  mel_config = _MEL.value.to_dict()
  splits, work_fn, extra = SOURCES[_SOURCE.value](mel_config)
  writer.write_corpus(
    _OUTPUT.value,
    splits,
    work_fn,
    mel_config=mel_config,
    source=_SOURCE.value,
    extra_info=extra,
    num_workers=_NUM_WORKERS.value,
    shard_size=_SHARD_SIZE.value,
  )


if __name__ == "__main__":
  cli.run(main)
