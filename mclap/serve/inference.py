"""The Python API of a trained model: `model = mclap.load(bundle)`.

```python
import mclap

model = mclap.load("bundles/demo")
audio = model.embed_audio(["a.wav", "b.flac"])            # [2, dim], L2-normalised
text = model.embed_text(["calm piano", "loud drums"])     # [2, dim]
scores = audio @ text.T                                   # cosine similarities
probs = model.zero_shot(["a.wav"], ["piano", "organ"])    # [1, 2], softmax over the labels
```

Audio is decoded, resampled and turned into a log-mel exactly as `mclap.data.prepare` does, then
embedded from its central crop (or the mean of `crops` evenly spaced crops); imported MusCALL
models crop the waveform before the log-mel, as the original does (`crop`). Embedding goes through
`mclap.models.embedder`, as validation and `mclap.eval` do, on this process's first device.
A model over precomputed features (`configs/features.py`) embeds feature files or arrays instead
(`embed_features`), cropped as evaluation crops its corpus.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from mclap import parallel
from mclap.data import audio as audio_lib
from mclap.data import features as features_lib
from mclap.data import mel as mel_lib
from mclap.data import pipeline
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import UserError
from mclap.models.embedder import Embedder
from mclap.serve import bundle as bundle_lib

CROP_RULES = ("mel", "waveform", "fusion")
# An audio input: a file path, a mono waveform at the model's sample rate, or (waveform, its rate).
AudioInput = str | os.PathLike | np.ndarray | tuple[np.ndarray, int]
# A features input: a .npy/.npz file, or an array [frames, dim] (or [dim]).
FeatureInput = str | os.PathLike | np.ndarray


class Model:
  """A loaded bundle: embeds audio and text into the joint space, scores zero-shot labels."""

  def __init__(self, directory: str | pathlib.Path, batch_size: int = 16, max_seconds: float = 600.0):
    self.directory = pathlib.Path(directory)
    self.meta, model = bundle_lib.read(self.directory)
    self.config, self.spec = self.meta["config"], self.meta["spec"]
    seconds = self.config.data.crop_seconds
    # What the audio tower reads: log-mels of audio, or precomputed features ({dim, frame_rate}).
    self.features = features_lib.check_config(self.config.data.features) if "features" in self.config.data else None
    if self.features is not None:
      self.mel_config = self.sample_rate = self.crop_samples = None
      self.crop_frames = features_lib.crop_frames(seconds, self.features["frame_rate"])
    else:
      self.mel_config = self.config.data.mel.to_dict()
      self.sample_rate = int(self.mel_config["sample_rate"])
      self.crop_frames = mel_lib.num_frames(seconds, self.mel_config)
      self.crop_samples = int(round(seconds * self.sample_rate))
    self.crop = self.config.data.get("crop", "mel")  # Bundles written before the key cropped the mel.
    self.pad = self.config.data.get("pad", "zeros")  # Imported CLAP models repeat short clips.
    self.batch_size, self.max_seconds = batch_size, max_seconds
    self.tokenizer = tokenizer_lib.for_config(self.config)
    self.logit_scale = float(model.logit_scale())
    device = Mesh(np.array(jax.local_devices()[:1]), (parallel.DATA,))
    self._embedder, self._state = Embedder.for_model(model, device, batch_size)
    self.dim = self._embedder.dim(self._state)

  def waveform(self, audio: AudioInput) -> np.ndarray:
    """Mono float32 at the model's rate, at most `max_seconds`, decoded and checked as `prepare`
    does. Raises `audio_lib.AudioError` for input that cannot be used (missing, unreadable, silent ...)."""
    if self.features is not None:
      raise UserError(f"{self.directory} embeds precomputed features, not audio: use embed_features")
    if isinstance(audio, (str, os.PathLike)):
      return audio_lib.load_audio(audio, self.sample_rate, max_seconds=self.max_seconds)
    wave, rate = (audio[0], int(audio[1])) if isinstance(audio, tuple) else (audio, self.sample_rate)
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1:
      raise UserError(
        f"a waveform must be mono, shape [samples]; got shape {list(wave.shape)}: mix its channels to one "
        "(wave.mean(axis=0) for [channels, samples], axis=1 for [samples, channels])"
      )
    return audio_lib.conform(wave[: int(self.max_seconds * rate)], rate, self.sample_rate)

  def mel_crops(self, wave: np.ndarray, crops: int | None = None, crop: str | None = None) -> np.ndarray:
    """The crops `[crops, n_mels, frames]` of a waveform that the model embeds: the central one, or
    `crops` evenly spaced ones (default: the bundle's `data.eval_crops`).

    `crop` (default: the bundle's `data.crop`) says where the crop is taken: "mel" crops the
    whole file's log-mel, as mclap trains and evaluates; "waveform" crops the samples and takes
    the log-mel of the crop, zero-padding shorter files, as the original MusCALL does (the
    default of imported MusCALL bundles, so their embeddings are the original's for any length);
    bundles of CLAP models repeat shorter files first (`data.pad` "repeat"), as CLAP does.
    "fusion" (fused CLAP models) gives one input `[1, 4, n_mels, frames]`: `pipeline.fusion_views`
    of the whole file's log-mel, or four copies of the cut one when the file is no longer.
    """
    count = crops or self.config.data.eval_crops
    rule = crop or self.crop
    if rule not in CROP_RULES:
      raise UserError(f"crop={rule!r}; use one of {', '.join(CROP_RULES)}")
    if (rule == "fusion") != bool(self.spec.audio.get("fusion")):
      raise UserError(f"crop={rule!r}: fused CLAP models take crop=fusion, and only they do")
    if rule == "mel":
      mel = mel_lib.log_mel(wave, self.mel_config)
      return pipeline.eval_crops(mel, self.crop_frames, count, mel_lib.floor_db(self.mel_config))[0]
    if rule == "fusion":  # One input of four views.
      wave = pipeline.fusion_waveform(wave, self.crop_samples, self.pad)
      return pipeline.fusion_views(mel_lib.log_mel(wave, self.mel_config), self.crop_frames)[None]
    waves = pipeline.waveform_crops(wave, self.crop_samples, count, self.pad)
    return np.stack([mel_lib.log_mel(w, self.mel_config) for w in waves])

  def tower_frames(self, mels: Sequence[np.ndarray], hop_frames: int) -> list[np.ndarray]:
    """Per log-mel `[n_mels, frames]`, the audio tower's features `[windows, tower dim]` of its
    crops starting every `hop_frames` frames (one padded crop for a clip no longer than a crop):
    frame-level features of this frozen tower, `sample_rate / hop_length / hop_frames` per second,
    for a corpus of precomputed features (`mclap.embed --features_out`). The windows of all the
    clips go through the tower together, in full batches."""
    if self.features is not None or self.spec.audio.get("fusion"):
      raise UserError(f"{self.directory}: frame features come from towers over single log-mel crops, not this one")
    floor, windows, counts = mel_lib.floor_db(self.mel_config), [], []
    for mel in mels:
      starts = range(0, max(mel.shape[1] - self.crop_frames, 0) + 1, hop_frames)
      windows += [pipeline.crop_or_pad(mel, self.crop_frames, s, floor)[0][None] for s in starts]
      counts.append(len(starts))
    features = self._embedder.mels(self._state, windows, space="pre_joint")
    return np.split(features, np.cumsum(counts)[:-1])

  def feature_crops(self, features: FeatureInput, crops: int | None = None) -> np.ndarray:
    """The crops `[crops, dim, frames]` of one track's features that the model embeds: its central
    crop of frames, or `crops` evenly spaced ones (default: the bundle's `data.eval_crops`), after
    the checks and float16 rounding of `prepare --source features`, so that a file embeds as its
    record in a prepared corpus does. Raises `features_lib.FeatureError` for unusable input."""
    if self.features is None:
      raise UserError(f"{self.directory} embeds audio, not precomputed features: use embed_audio")
    dim, framed = self.features["dim"], bool(self.features["frame_rate"])
    if isinstance(features, (str, os.PathLike)):
      array = features_lib.read_array(features, dim)
    else:
      array = features_lib.check_array(features, "the array", dim)
    if not framed and len(array) > 1:
      raise features_lib.FeatureError("has frames", f"{len(array)} frames; the model takes one vector per clip")
    count = crops or self.config.data.eval_crops
    return pipeline.eval_crops(array.T.astype(np.float16), self.crop_frames, count, 0.0)[0]

  def embed_mels(self, mels: Iterable[np.ndarray]) -> np.ndarray:
    """Joint-space embeddings `[n, dim]` of clips given as crops `[crops, rows, frames]` each (log-mel
    rows, or feature rows of a features model)."""
    return self._embedder.mels(self._state, list(mels))

  def _embed_each(self, inputs: Sequence, crops_of, unusable: type[Exception], noun: str, errors: str):
    """Embeddings of `inputs` through `crops_of(input)`; an input that raises `unusable` raises a
    `UserError` naming it, or with `errors="skip"` is left out and reported by position."""
    if errors not in ("raise", "skip"):
      raise UserError(f"errors={errors!r}; use raise or skip")
    clips, skipped = [], {}
    for position, item in enumerate(inputs):
      try:
        clips.append(crops_of(item))
      except unusable as e:
        name = item if isinstance(item, (str, os.PathLike)) else f"{noun} {position}"
        if errors == "raise":
          raise UserError(f"{name}: {e}; pass errors='skip' to embed the others") from e
        skipped[position] = str(e)
    embeddings = self.embed_mels(clips)
    return (embeddings, skipped) if errors == "skip" else embeddings

  def embed_features(
    self, features: Sequence[FeatureInput], crops: int | None = None, errors: str = "raise"
  ) -> np.ndarray | tuple[np.ndarray, dict[int, str]]:
    """L2-normalised embeddings `[len(features), dim]` of feature files or arrays, for a model over
    precomputed features (see `feature_crops`; `errors` as in `embed_audio`)."""
    _check_list(features, "feature files or arrays", "embed_features([x])")
    crops_of = lambda item: self.feature_crops(item, crops)  # noqa: E731
    return self._embed_each(features, crops_of, features_lib.FeatureError, "array", errors)

  def embed_audio(
    self, audio: Sequence[AudioInput], crops: int | None = None, crop: str | None = None, errors: str = "raise"
  ) -> np.ndarray | tuple[np.ndarray, dict[int, str]]:
    """L2-normalised embeddings `[len(audio), dim]` of files or waveforms (see `waveform`, and
    `mel_crops` for `crops` and `crop`).

    An input that cannot be used (missing, unreadable, silent ...) raises a `UserError` naming it;
    with `errors="skip"` it is left out instead, and the result is `(embeddings of the others,
    {position in audio: reason})`.
    """
    _check_list(audio, "audio files or waveforms", "embed_audio([x])")
    crops_of = lambda item: self.mel_crops(self.waveform(item), crops, crop)  # noqa: E731
    return self._embed_each(audio, crops_of, audio_lib.AudioError, "waveform", errors)

  def embed_text(self, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised embeddings `[len(texts), dim]`."""
    if isinstance(texts, str):
      raise UserError("embed_text takes a list of texts; wrap a single one: embed_text([text])")
    return self._embedder.texts(self._state, self.tokenizer, list(texts))

  def zero_shot(
    self,
    audio: Sequence[AudioInput],
    labels: Sequence[str],
    prompt: str = "A {} track",
    crops: int | None = None,
    crop: str | None = None,
  ) -> np.ndarray:
    """Probabilities `[len(audio), len(labels)]`: softmax over the labels of the model's logits
    (logit scale x cosine similarity between a clip and the label's prompt). A features model
    takes feature files or arrays as `audio`."""
    if "{}" not in prompt:
      raise UserError(f"prompt {prompt!r} needs a {{}} where the label goes")
    _check_list(audio, "audio files or waveforms", "zero_shot([x], labels)")
    if isinstance(labels, str):
      raise UserError(f"zero_shot takes a list of labels: [{labels!r}]")
    if not labels:
      raise UserError("zero_shot needs labels to choose from")
    clips = self.embed_features(audio, crops) if self.features else self.embed_audio(audio, crops, crop)
    logits = self.logit_scale * clips @ self.embed_text([prompt.format(x) for x in labels]).T
    return np.asarray(jax.nn.softmax(logits, axis=-1))

  def __repr__(self) -> str:
    return (
      f"mclap.Model({str(self.directory)!r}: audio {self.spec.audio['kind']}, text {self.spec.text['kind']}, "
      f"{self.config.data.crop_seconds:g} s crops, dtype {self.meta['dtype']}, from {self.meta['source']})"
    )


def _check_list(inputs: object, what: str, call: str) -> None:
  """Refuses one input where a list of them goes (a path, a waveform, `(waveform, rate)`), which
  iterating would take apart into characters or samples and report as many bad inputs."""
  one = isinstance(inputs, (str, os.PathLike)) or (isinstance(inputs, np.ndarray) and inputs.ndim <= 1)
  if one or (isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[1], (int, np.integer))):
    raise UserError(f"{call.split('(')[0]} takes a list of {what}; wrap a single one: {call}")


def load(directory: str | pathlib.Path, batch_size: int = 16, max_seconds: float = 600.0) -> Model:
  """Loads an inference bundle (written by `python -m mclap.export` or the MusCALL import)."""
  return Model(directory, batch_size=batch_size, max_seconds=max_seconds)
