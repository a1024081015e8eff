"""Shared fixtures: one tiny synthetic corpus per test session, and configs pointing at it."""

import os
import pathlib
import sys

import pytest
from absl import flags

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mclap import cli  # noqa: E402
from mclap.data import mel, synthetic, writer  # noqa: E402

flags.FLAGS.mark_as_parsed()  # Grain reads its absl flags; jobs parse them in `cli.run`.

TINY_MEL = dict(mel.default_mel_config(), n_mels=32)
TINY_CLIPS = 64
TINY_SECONDS = 3.0


def build_synthetic(output, num_clips=TINY_CLIPS, seconds=TINY_SECONDS, seed=0, **kwargs):
  splits = synthetic.plan_clips(num_clips, seed, seconds)
  work_fn = synthetic.make_record_fn(TINY_MEL)
  kwargs = {"num_workers": 0, "shard_size": 16, "show_progress": False, **kwargs}
  return writer.write_corpus(
    output,
    splits,
    work_fn,
    mel_config=TINY_MEL,
    source="synthetic",
    extra_info={"label_names": synthetic.LABEL_NAMES},
    **kwargs,
  )


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("tiny_corpus")
  build_synthetic(out)
  return out


@pytest.fixture
def tiny_config(tiny_corpus):
  config = cli.load_config(str(ROOT / "configs/muscall.py") + ":demo")
  config.data.dir = str(tiny_corpus)
  config.data.mel.n_mels = TINY_MEL["n_mels"]
  config.data.crop_seconds = 2.0
  config.data.num_workers = 0
  config.data.eval_batch_size = 8
  config.train.batch_size = 8
  return config
