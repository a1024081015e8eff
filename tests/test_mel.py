import warnings

import librosa
import numpy as np
import pytest

from mclap.data import mel


def test_log_mel_matches_librosa_melspectrogram_in_db():
  rng = np.random.default_rng(0)
  wave = rng.normal(0, 0.1, 16000).astype(np.float32)
  cfg = mel.default_mel_config()
  ours = mel.log_mel(wave, cfg)
  power = librosa.feature.melspectrogram(
    y=wave,
    sr=16000,
    n_fft=1024,
    hop_length=512,
    n_mels=128,
    fmin=0.0,
    fmax=8000.0,
    power=2.0,
    center=True,
    pad_mode="constant",
  )
  expected = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=80.0)
  assert ours.shape == (128, mel.num_frames(1.0, cfg)) == (128, 32)
  np.testing.assert_allclose(ours, expected, atol=1e-3)


@pytest.mark.parametrize(
  "sr, n_fft, n_mels, fmin, fmax, htk, norm",
  [
    (16000, 1024, 128, 0.0, 8000.0, False, "slaney"),  # mclap's default.
    (16000, 1024, 128, 0.0, 11025.0, True, ""),  # MusCALL's torchaudio front end (empty top filters).
    (22050, 2048, 96, 30.0, 11025.0, False, ""),
    (44100, 512, 40, 100.0, 16000.0, True, "slaney"),
  ],
)
def test_filterbank_equals_librosa(sr, n_fft, n_mels, fmin, fmax, htk, norm):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # librosa's "Empty filters detected".
    expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm or None)
  ours = mel._filterbank(sr, n_fft, n_mels, fmin, fmax, htk, norm)
  assert ours.dtype == np.float32 and ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))
  edges = librosa.mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax, htk=htk)
  np.testing.assert_allclose(mel.mel_frequencies(n_mels + 2, fmin, fmax, htk), edges, rtol=1e-12)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("samples", [16000, 16000 + 300, 1500])
def test_power_spectrogram_equals_librosa_stft(pad_mode, samples):
  wave = np.random.default_rng(samples).normal(0, 0.1, samples).astype(np.float32)
  expected = np.abs(librosa.stft(wave, n_fft=1024, hop_length=512, center=True, pad_mode=pad_mode)) ** 2
  ours = mel.power_spectrogram(wave, 1024, 512, pad_mode)
  assert ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-5 * float(expected.max()))
  window = librosa.filters.get_window("hann", 1024, fftbins=True)
  np.testing.assert_allclose(mel._hann(1024), window, atol=1e-7)


def test_loudness_survives_the_log_scale():
  wave = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
  cfg = mel.default_mel_config()
  difference = mel.log_mel(wave, cfg).max() - mel.log_mel(0.1 * wave, cfg).max()
  np.testing.assert_allclose(difference, 20.0, atol=1e-3)  # 10x amplitude = +20 dB.


def test_num_frames_matches_muscall_crop():
  assert mel.num_frames(20.0, mel.default_mel_config()) == 626
  assert mel.floor_db(mel.default_mel_config()) == -100.0


def test_corpora_written_before_newer_mel_keys_read_with_the_values_they_used(tmp_path):
  import json

  from mclap import cli
  from mclap.data import pipeline, records

  older = {k: v for k, v in mel.default_mel_config().items() if k not in ("pad_mode", "window_norm")}
  (tmp_path / records.INFO_FILE).write_text(json.dumps({"mel": older}))
  info = records.read_info(tmp_path)
  assert info["mel"]["pad_mode"] == "constant" and info["mel"]["window_norm"] is False
  config = cli.load_config("configs/muscall.py")
  pipeline.check_corpus(info, config, str(tmp_path))  # No mismatch reported.
  preset = mel.muscall_torchaudio_config()
  assert (preset.htk, preset.norm, preset.fmax, preset.top_db, preset.pad_mode, preset.window_norm) == (
    True, "", 11025.0, 100.0, "reflect", True,
  )  # fmt: skip
