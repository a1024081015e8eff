"""Augmentations against hand-derived values and NumPy references; the pipeline's use of them."""

import numpy as np
import pytest

from mclap.data import augment, pipeline, records
from mclap.errors import ConfigError

FLOOR = -100.0


def _mel(rng, shape=(16, 40), valid=30):
  mel = rng.uniform(-60.0, 0.0, size=shape).astype(np.float32)
  mel[:, valid:] = FLOOR
  return mel


def test_gain_is_an_offset_of_the_valid_frames_clipped_at_the_floor():
  mel = np.array([[0.0, -95.0, FLOOR], [-10.0, -50.0, FLOOR]], np.float32)
  out = augment.apply_gain(mel, 2, -6.0, FLOOR)
  np.testing.assert_array_equal(out, [[-6.0, -100.0, FLOOR], [-16.0, -56.0, FLOOR]])


def test_mix_adds_powers():
  a, b = np.zeros((2, 3), np.float32), np.full((2, 3), -10.0, np.float32)  # Powers 1 and 0.1.
  np.testing.assert_allclose(augment.mix(a, b, 0.5, FLOOR), 10 * np.log10(0.55), rtol=1e-6)
  np.testing.assert_allclose(augment.mix(a, b, 1.0, FLOOR), a, atol=1e-6)


def test_noise_has_the_requested_snr_and_spares_padding():
  rng = np.random.default_rng(0)
  mel = _mel(rng, shape=(64, 600), valid=500)
  out = augment.add_noise(mel, 500, 10.0, FLOOR, np.random.default_rng(1))
  added = 10 ** (out[:, :500].astype(np.float64) / 10) - 10 ** (mel[:, :500].astype(np.float64) / 10)
  signal = (10 ** (mel[:, :500].astype(np.float64) / 10)).mean()
  assert abs(10 * np.log10(signal / added.mean()) - 10.0) < 0.2  # 32,000 exponential draws.
  assert (added >= -1e-9 * signal).all()
  np.testing.assert_array_equal(out[:, 500:], FLOOR)


@pytest.mark.parametrize("bins", [-3, 0, 2])
def test_shift_bins_against_numpy_roll(bins):
  mel = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
  expected = np.roll(mel, bins, axis=0)
  if bins > 0:
    expected[:bins] = FLOOR
  elif bins < 0:
    expected[bins:] = FLOOR
  np.testing.assert_array_equal(augment.shift_bins(mel, bins, FLOOR), expected)


def test_masks_silence_the_drawn_frames_and_bands_within_the_valid_part():
  rng = np.random.default_rng(0)
  mel = _mel(rng)
  augmenter = augment.Augmenter(
    floor=FLOOR, frames_per_second=10.0, time_masks=2, time_mask_seconds=1.0, freq_masks=2, freq_mask_bins=3
  )
  for seed in range(20):
    out = augmenter(mel, 30, np.random.default_rng(seed))
    changed = out != mel
    assert not changed[:, 30:].any()  # Padding untouched.
    silent_frames = (out[:, :30] == FLOOR).all(0).sum()
    silent_bands = (out[:, :30] == FLOOR).all(1).sum()
    assert silent_frames <= 2 * 10 and silent_bands <= 2 * 3
    assert (out[changed] == FLOOR).all()  # Masks only ever silence.


def test_every_augmentation_off_is_the_identity():
  mel = _mel(np.random.default_rng(0))
  augmenter = augment.Augmenter.from_config(augment.default_config(), FLOOR, 31.25)
  np.testing.assert_array_equal(augmenter(mel, 30, np.random.default_rng(0)), mel)
  assert augmenter.mixup_weight(np.random.default_rng(0)) is None
  assert augmenter.is_identity
  masked = augment.default_config()
  masked.time_masks = 1
  assert not augment.Augmenter.from_config(masked, FLOOR, 31.25).is_identity


def test_bad_settings_are_config_errors():
  config = augment.default_config()
  config.gain_prob = 1.5
  with pytest.raises(ConfigError, match="gain_prob=1.5 is not a probability"):
    augment.Augmenter.from_config(config, FLOOR, 31.25)


def _augmented(config):
  config.data.augment.update(
    gain_prob=1.0, noise_prob=0.5, pitch_prob=0.5, time_masks=1, freq_masks=1, freq_mask_bins=4, mixup_prob=0.5
  )
  return config


def test_training_augments_reproducibly_and_evaluation_never(tiny_config):
  plain = pipeline.train_dataset(tiny_config)[0]
  plain_eval = pipeline.eval_dataset(tiny_config, "validation")[0]
  _augmented(tiny_config)
  augmented = pipeline.train_dataset(tiny_config)[0]
  np.testing.assert_array_equal(augmented["index"], plain["index"])  # Same clips, same order...
  assert not np.array_equal(augmented["mel"], plain["mel"])  # ...augmented.
  np.testing.assert_array_equal(pipeline.train_dataset(tiny_config)[0]["mel"], augmented["mel"])
  evaluated = pipeline.eval_dataset(tiny_config, "validation")[0]
  for key in plain_eval:
    np.testing.assert_array_equal(evaluated[key], plain_eval[key], err_msg=key)


def test_mixup_keeps_the_dominant_clips_caption_and_label_and_adds_partner_tags(tiny_config):
  tiny_config.data.caption = "first"
  tiny_config.data.augment.update(mixup_prob=1.0)
  batch = pipeline.train_dataset(tiny_config)[0]
  tiny_config.data.augment.update(mixup_prob=0.0)
  plain = pipeline.train_dataset(tiny_config)[0]
  for key in ("tokens", "label", "index"):
    np.testing.assert_array_equal(batch[key], plain[key], err_msg=key)
  assert (batch["tags"] >= plain["tags"]).all()
  assert not np.array_equal(batch["mel"], plain["mel"])


def test_sentences_as_positives(tiny_config):
  assert pipeline.split_sentences("Slow piano.  Then drums! Fast? ") == ["Slow piano.", "Then drums!", "Fast?"]
  assert pipeline.positives(["A b. C d.", " ", "E"], "sentences") == ["A b.", "C d.", "E"]
  assert pipeline.positives(["A b. C d.", " ", "E"], "captions") == ["A b. C d.", "E"]
  record = records.CorpusReader(tiny_config.data.dir, "train")[0]
  tiny_config.data.update(positives="sentences", caption="join")
  example = pipeline.eval_dataset(tiny_config, "train")[0]
  tokens, _ = pipeline.TextTokenizer(None, tiny_config.data.max_tokens)([" ".join(record["captions"])])
  np.testing.assert_array_equal(example["tokens"][0], tokens[0])  # Joined sentences = joined captions.


def test_two_views_are_two_augmentations_of_one_crop(tiny_config):
  tiny_config.data.views = 2
  tiny_config.data.augment.update(gain_prob=1.0, gain_db=6.0)
  batch = pipeline.train_dataset(tiny_config)[0]
  offsets = batch["mel_view2"].astype(np.float32) - batch["mel"].astype(np.float32)
  for clip in offsets:  # Two gains of the same crop differ by one dB offset everywhere.
    assert np.ptp(clip) < 0.1 and abs(clip.mean()) <= 12.0
  assert np.abs(offsets).max() > 0.5
  assert "mel_view2" not in pipeline.eval_dataset(tiny_config, "validation")[0]
