"""Builds a tiny TFDS audio dataset (array_record) for the tfds source test: `python tfds_tiny.py DATA_DIR`.

Run as a subprocess so TensorFlow, which TFDS's audio features need, never loads into the test
process. Examples: int64 PCM at 22.05 kHz (mono and stereo), a caption and a genre label; one
silent example, which prepare must reject.
"""

import sys

import numpy as np
import tensorflow_datasets as tfds

RATE = 22050


def pcm(seconds, freq, channels=1):
  t = np.arange(int(seconds * RATE)) / RATE
  wave = (0.5 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int64)
  return np.stack([wave] * channels, axis=1) if channels > 1 else wave


class TinyMusic(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "audio": tfds.features.Audio(shape=(None, 2), sample_rate=RATE),
          "caption": tfds.features.Text(),
          "genre": tfds.features.ClassLabel(names=["blues", "jazz"]),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples([0, 1, 2]), "valid": self._generate_examples([3])}

  def _generate_examples(self, ids):
    for i in ids:
      wave = pcm(1.5, 300.0 + 100 * i, channels=2) * (0 if i == 2 else 1)
      yield i, {"audio": wave, "caption": f"clip number {i}", "genre": i % 2}


if __name__ == "__main__":
  TinyMusic(data_dir=sys.argv[1], file_format="array_record").download_and_prepare()
