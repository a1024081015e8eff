"""The built-in synthetic music–caption corpus.

Each clip is a short procedurally rendered piece: one of eight instrument families with clearly
different timbres, in a key and mode, at a tempo, in a register, with a rhythmic style, a
loudness, and optional drums. Its captions describe exactly those attributes with varied
templates and synonyms, and its tags and label record them, so text→audio retrieval and
zero-shot instrument/tag prediction are learnable and measurable with no download.

Everything is a pure function of (seed, clip index): the corpus is identical whatever the number
of worker processes or the order in which clips are rendered.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.signal

from mclap.data import mel as mel_lib
from mclap.prepare.listing import SPLIT_FRACTIONS

# Attribute vocabularies. The first word of each synonym list is also the tag.
TEMPOS = {"slow": (60, 80), "medium": (95, 115), "fast": (135, 165)}
TEMPO_WORDS = {
  "slow": ["slow", "unhurried", "leisurely"],
  "medium": ["mid-tempo", "moderately paced", "medium-tempo"],
  "fast": ["fast", "quick", "up-tempo", "rapid"],
}
MOODS = {  # (mode, tempo) -> mood: mood is heard through the other attributes.
  ("major", "slow"): "calm",
  ("major", "medium"): "happy",
  ("major", "fast"): "upbeat",
  ("minor", "slow"): "sad",
  ("minor", "medium"): "mysterious",
  ("minor", "fast"): "tense",
}
MOOD_WORDS = {
  "calm": ["calm", "peaceful", "relaxed", "gentle"],
  "happy": ["happy", "cheerful", "bright", "joyful"],
  "upbeat": ["upbeat", "lively", "energetic"],
  "sad": ["sad", "melancholic", "somber", "mournful"],
  "mysterious": ["mysterious", "dark", "brooding"],
  "tense": ["tense", "dramatic", "agitated", "urgent"],
}
RHYTHM_WORDS = {
  "steady": ["steady", "even", "flowing"],
  "syncopated": ["syncopated", "bouncy", "off-beat"],
  "sparse": ["sparse", "spacious", "sustained"],
}
LOUDNESS_DB = {"soft": -24.0, "loud": -3.0}  # Peak level of the mix in dBFS.
LOUDNESS_WORDS = {"soft": ["soft", "quiet", "delicate"], "loud": ["loud", "powerful", "forceful"]}
REGISTER_MIDI = {"low": (40, 55), "high": (64, 79)}
REGISTER_WORDS = {"low": ["low", "deep", "low-pitched"], "high": ["high", "bright", "high-pitched"]}
NOTE_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
SCALES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10]}


def _envelope(n: int, sr: int, attack: float, release: float) -> np.ndarray:
  t = np.arange(n) / sr
  env = np.minimum(1.0, t / max(attack, 1e-4))
  return env * np.clip((n / sr - t) / max(release, 1e-4), 0.0, 1.0)


_TABLE_SIZE = 2048


def _tone(f: float, n: int, sr: int, amps, vibrato: float = 0.0) -> np.ndarray:
  """Periodic tone with harmonic amplitudes `amps` (harmonics 1, 2, ...), by wavetable lookup.

  One table read per sample whatever the number of partials; partials above 0.45·sr are dropped
  so nothing aliases.
  """
  amps = np.asarray(amps, np.float64)
  k = np.arange(1, len(amps) + 1)
  amps = np.where(k * f < 0.45 * sr, amps, 0.0)
  x = np.arange(_TABLE_SIZE) / _TABLE_SIZE
  table = np.sin(2 * np.pi * np.outer(x, k)) @ amps
  t = np.arange(n) / sr
  freq = f * (1.0 + vibrato * np.sin(2 * np.pi * 5.5 * t)) if vibrato else np.full(n, f)
  cycles = np.cumsum(freq) / sr
  return table[(cycles * _TABLE_SIZE).astype(np.int64) % _TABLE_SIZE]


def _crossfade(a: np.ndarray, b: np.ndarray, weight_a: np.ndarray) -> np.ndarray:
  return weight_a * a + (1.0 - weight_a) * b


def _lowpass(x: np.ndarray, cutoff: float, sr: int) -> np.ndarray:
  b, a = scipy.signal.butter(2, min(cutoff, 0.45 * sr) / (sr / 2))
  return scipy.signal.lfilter(b, a, x)


def _piano(f, n, sr, rng):
  """Hammered string: a bright attack that mellows as the upper partials die away."""
  t = np.arange(n) / sr
  k = np.arange(1, 13)
  bright, dull = _tone(f, n, sr, 1.0 / k**1.2), _tone(f, n, sr, [1.0, 0.3, 0.1])
  return _crossfade(bright, dull, np.exp(-3.0 * t)) * np.exp(-1.2 * t) * _envelope(n, sr, 0.003, 0.05)


def _guitar(f, n, sr, rng):
  """Karplus–Strong plucked string: a noise burst circulating in a damped delay line."""
  delay = max(2, int(round(sr / f)))
  excitation = np.zeros(n)
  excitation[:delay] = rng.uniform(-1, 1, min(delay, n))
  a = np.zeros(delay + 2)
  a[0], a[delay], a[delay + 1] = 1.0, -0.498, -0.498
  return scipy.signal.lfilter([1.0], a, excitation) * _envelope(n, sr, 0.001, 0.03)


def _strings(f, n, sr, rng):
  """Bowed string: sawtooth with vibrato, body low-pass, slow attack."""
  k = np.arange(1, 25)
  return _lowpass(_tone(f, n, sr, 1.0 / k, vibrato=0.004), 3500.0, sr) * _envelope(n, sr, 0.12, 0.15)


def _brass(f, n, sr, rng):
  """Lip-reed: the spectrum opens from dull to brassy during the attack."""
  t = np.arange(n) / sr
  k = np.arange(1, 16)
  bright, dull = _tone(f, n, sr, np.exp(-k / 6.0), 0.002), _tone(f, n, sr, np.exp(-k / 1.0), 0.002)
  return _crossfade(bright, dull, np.minimum(1.0, t / 0.08)) * _envelope(n, sr, 0.04, 0.06)


def _flute(f, n, sr, rng):
  """Near-sine tone with breath noise around the pitch."""
  tone = _tone(f, n, sr, [1.0, 0.2, 0.05], vibrato=0.006)
  b, a = scipy.signal.butter(2, [0.8 * f / (sr / 2), min(0.99, 1.25 * f / (sr / 2))], "bandpass")
  breath = scipy.signal.lfilter(b, a, rng.normal(0, 1, n)) * 0.6
  return (tone + breath) * _envelope(n, sr, 0.08, 0.08)


def _clarinet(f, n, sr, rng):
  """Closed pipe: odd harmonics only."""
  k = np.arange(1, 20)
  return _tone(f, n, sr, np.where(k % 2 == 1, 1.0 / k, 0.0), 0.001) * _envelope(n, sr, 0.04, 0.05)


def _organ(f, n, sr, rng):
  """Drawbars 16', 8', 4', 2 2/3', 2', 1 1/3', 1' as harmonics of the sub-octave; no decay."""
  drawbars = np.zeros(16)
  drawbars[[0, 1, 3, 5, 7, 11, 15]] = [0.6, 1.0, 0.8, 0.5, 0.5, 0.3, 0.3]
  return _tone(f / 2, n, sr, drawbars) * _envelope(n, sr, 0.005, 0.01)


def _synth_pad(f, n, sr, rng):
  """Three detuned sawtooths, low-passed, with a slow swell."""
  k = np.arange(1, 16)
  tone = sum(_tone(f * 2 ** (c / 1200), n, sr, 1.0 / k) for c in (-9.0, 0.0, 9.0))
  return _lowpass(tone, 1800.0, sr) * _envelope(n, sr, 0.35, 0.3)


@dataclasses.dataclass(frozen=True)
class Instrument:
  synth: Callable[[float, int, int, np.random.Generator], np.ndarray]
  names: dict[str, list[str]]  # register -> caption names (synonyms)
  polyphonic: bool  # Plays chords under the melody.
  sustained: bool  # Notes held for their full length (otherwise they decay).


INSTRUMENTS = {
  "piano": Instrument(
    _piano,
    {"low": ["piano", "grand piano", "acoustic piano"], "high": ["piano", "grand piano", "acoustic piano"]},
    True,
    False,
  ),
  "guitar": Instrument(
    _guitar,
    {"low": ["guitar", "acoustic guitar", "plucked guitar"], "high": ["guitar", "acoustic guitar", "plucked guitar"]},
    True,
    False,
  ),
  "strings": Instrument(
    _strings,
    {"low": ["cello", "low strings", "bowed strings"], "high": ["violin", "strings", "bowed strings"]},
    False,
    True,
  ),
  "brass": Instrument(
    _brass, {"low": ["trombone", "brass", "horn"], "high": ["trumpet", "brass", "horn"]}, False, True
  ),
  "flute": Instrument(
    _flute, {"low": ["alto flute", "flute", "airy flute"], "high": ["flute", "airy flute", "piccolo"]}, False, True
  ),
  "clarinet": Instrument(
    _clarinet,
    {"low": ["bass clarinet", "clarinet", "reedy clarinet"], "high": ["clarinet", "reedy clarinet", "woodwind"]},
    False,
    True,
  ),
  "organ": Instrument(
    _organ,
    {"low": ["organ", "church organ", "pipe organ"], "high": ["organ", "electric organ", "church organ"]},
    True,
    True,
  ),
  "synth": Instrument(
    _synth_pad,
    {"low": ["synth pad", "synthesizer pad", "ambient synth"], "high": ["synth pad", "synthesizer", "ambient synth"]},
    True,
    True,
  ),
}
LABEL_NAMES = list(INSTRUMENTS)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What the parent process plans for one clip; the rest is drawn from (seed, index)."""

  id: str
  index: int
  seed: int
  instrument: str
  seconds: float


def plan_clips(num_clips: int, seed: int, seconds: float) -> dict[str, list[ClipSpec]]:
  """Balanced instruments and stratified train/validation/test splits, fixed by the seed."""
  rng = np.random.default_rng([seed, 0x5EED])
  labels = rng.permutation(np.resize(np.arange(len(LABEL_NAMES)), num_clips))
  splits = {name: [] for name, _ in SPLIT_FRACTIONS}
  for label in range(len(LABEL_NAMES)):
    members = np.flatnonzero(labels == label)
    bounds = np.round(np.cumsum([fraction for _, fraction in SPLIT_FRACTIONS]) * len(members)).astype(int)
    for (name, _), part in zip(SPLIT_FRACTIONS, np.split(members, bounds[:-1])):
      splits[name].extend(int(i) for i in part)
  return {
    name: [ClipSpec(f"synth-{i:06d}", i, seed, LABEL_NAMES[labels[i]], seconds) for i in sorted(idx)]
    for name, idx in splits.items()
  }


def draw_attributes(spec: ClipSpec, rng: np.random.Generator) -> dict[str, Any]:
  mode = str(rng.choice(list(SCALES)))
  tempo = str(rng.choice(list(TEMPOS)))
  return {
    "instrument": spec.instrument,
    "tempo": tempo,
    "bpm": float(rng.uniform(*TEMPOS[tempo])),
    "mode": mode,
    "tonic": int(rng.integers(12)),
    "register": str(rng.choice(list(REGISTER_MIDI))),
    "rhythm": str(rng.choice(list(RHYTHM_WORDS))),
    "loudness": str(rng.choice(list(LOUDNESS_DB))),
    "drums": bool(rng.random() < 0.5),
    "mood": MOODS[(mode, tempo)],
  }


_RHYTHMS = {  # Note lengths in beats, cycled through a bar.
  "steady": [[1, 1, 1, 1], [0.5] * 8],
  "syncopated": [[1.5, 1, 1.5], [0.5, 1, 0.5, 1, 1], [0.75, 0.75, 0.5, 1, 1]],
  "sparse": [[2, 2], [4], [3, 1]],
}


def _melody(attrs, rng, seconds):
  """Note events (start s, duration s, MIDI pitch) of a random walk on the scale."""
  beat = 60.0 / attrs["bpm"]
  scale = SCALES[attrs["mode"]]
  lo, hi = REGISTER_MIDI[attrs["register"]]
  base = lo + (attrs["tonic"] - lo) % 12
  degree, t, events = 0, 0.0, []
  while t < seconds:
    for length in _RHYTHMS[attrs["rhythm"]][rng.integers(len(_RHYTHMS[attrs["rhythm"]]))]:
      degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 0, 10))
      pitch = base + 12 * (degree // 7) + scale[degree % 7]
      while pitch > hi:
        pitch -= 12
      events.append((t, length * beat, pitch))
      t += length * beat
  return events


def _chords(attrs, rng, seconds):
  """Triads on each bar (I, IV, V, vi or i, iv, v, VI) an octave under the melody's register."""
  beat = 60.0 / attrs["bpm"]
  scale = SCALES[attrs["mode"]]
  root = REGISTER_MIDI[attrs["register"]][0] - 12 + attrs["tonic"] % 12
  events, t = [], 0.0
  while t < seconds:
    degree = int(rng.choice([0, 3, 4, 5]))
    for step in (0, 2, 4):
      d = degree + step
      events.append((t, 4 * beat, root + 12 * (d // 7) + scale[d % 7]))
    t += 4 * beat
  return events


def _drums(attrs, rng, n, sr):
  beat = 60.0 / attrs["bpm"]
  out = np.zeros(n)
  kick_beats = [0, 2] if attrs["rhythm"] != "syncopated" else [0, 1.5, 2.5]

  def hit(start, sound):
    i = int(start * sr)
    if i < n:
      out[i : i + len(sound)] += sound[: n - i]

  tk = np.arange(int(0.25 * sr)) / sr
  kick = np.sin(2 * np.pi * np.cumsum(50 + 90 * np.exp(-tk / 0.03)) / sr) * np.exp(-tk / 0.12)
  ts = np.arange(int(0.2 * sr)) / sr
  snare = (rng.normal(0, 0.6, len(ts)) + np.sin(2 * np.pi * 185 * ts)) * np.exp(-ts / 0.06)
  th = np.arange(int(0.05 * sr)) / sr
  hat = np.diff(rng.normal(0, 0.4, len(th) + 1)) * np.exp(-th / 0.012)
  bar = 0.0
  while bar < n / sr:
    for b in kick_beats:
      hit(bar + b * beat, kick)
    for b in (1, 3):
      hit(bar + b * beat, snare)
    for b in np.arange(0, 4, 0.5):
      hit(bar + b * beat, hat)
    bar += 4 * beat
  return out


def render(attrs: dict[str, Any], seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
  """The clip as a float32 mono wave at `sr`, peak-normalised to its loudness."""
  n = int(round(seconds * sr))
  instrument = INSTRUMENTS[attrs["instrument"]]
  mix = np.zeros(n)
  events = [(e, 1.0) for e in _melody(attrs, rng, seconds)]
  if instrument.polyphonic:
    events += [(e, 0.35) for e in _chords(attrs, rng, seconds)]
  for (start, length, pitch), gain in events:
    i = int(start * sr)
    if i >= n:
      continue
    hold = length * (0.95 if instrument.sustained else 1.6)  # Decaying notes ring on.
    m = min(int(hold * sr), n - i)
    velocity = gain * rng.uniform(0.7, 1.0)
    mix[i : i + m] += velocity * instrument.synth(440.0 * 2 ** ((pitch - 69) / 12), m, sr, rng)
  mix /= np.abs(mix).max() + 1e-9
  if attrs["drums"]:
    drums = _drums(attrs, rng, n, sr)
    mix += 0.6 * drums / (np.abs(drums).max() + 1e-9)
  mix += rng.normal(0, 1e-3, n)  # A little noise floor, as in any recording.
  peak = 10 ** (LOUDNESS_DB[attrs["loudness"]] / 20)
  return (mix * peak / np.abs(mix).max()).astype(np.float32)


def _article(word: str) -> str:
  return "an" if word[0].lower() in "aeiou" else "a"


def _captions(attrs: dict[str, Any], rng: np.random.Generator, count: int = 3) -> list[str]:
  """`count` different captions of the clip, each from its own template, with synonyms."""
  pick = lambda words: str(rng.choice(words))  # noqa: E731
  inst = pick(INSTRUMENTS[attrs["instrument"]].names[attrs["register"]])
  mood = pick(MOOD_WORDS[attrs["mood"]])
  tempo = pick(TEMPO_WORDS[attrs["tempo"]])
  reg = pick(REGISTER_WORDS[attrs["register"]])
  rhythm = pick(RHYTHM_WORDS[attrs["rhythm"]])
  loud = pick(LOUDNESS_WORDS[attrs["loudness"]])
  key = f"{NOTE_NAMES[attrs['tonic']]} {attrs['mode']}"
  if attrs["drums"]:
    with_drums = pick([" with drums", " with a drum beat", " with percussion"])
    drums_phrase = pick(["drums keep the beat", "backed by a drum kit", "with a steady drum groove"])
  else:
    with_drums = pick(["", " without drums", ", no percussion"])
    drums_phrase = pick(["no drums", "without any percussion", "solo, no drum kit"])
  templates = [
    f"{_article(mood).capitalize()} {mood} {inst} piece in a {attrs['mode']} key{with_drums}.",
    f"{tempo}, {mood} {reg} {inst} line{with_drums}",
    f"A {loud} {tempo} track featuring {inst}{with_drums}, {mood} and in {key}.",
    f"{inst.capitalize()} playing a {rhythm} {attrs['mode']} melody at a {tempo} pace{with_drums}.",
    f"This is {_article(mood)} {mood}, {tempo} song with {_article(reg)} {reg} {inst}{with_drums}.",
    f"{loud.capitalize()} {inst} music, {tempo} and {rhythm}, {drums_phrase}.",
  ]
  return [templates[i] for i in rng.choice(len(templates), size=count, replace=False)]


def tags_of(attrs: dict[str, Any]) -> list[str]:
  return [
    attrs["instrument"],
    attrs["tempo"],
    attrs["mode"],
    attrs["mood"],
    attrs["register"],
    attrs["rhythm"],
    attrs["loudness"],
    "drums" if attrs["drums"] else "no drums",
  ]


def make_record(spec: ClipSpec, mel_config: dict[str, Any]) -> dict[str, Any]:
  """Renders one clip and returns its corpus record (the writer's work function)."""
  rng = np.random.default_rng([spec.seed, spec.index])
  attrs = draw_attributes(spec, rng)
  wave = render(attrs, spec.seconds, int(mel_config["sample_rate"]), rng)
  return {
    "id": spec.id,
    "mel": mel_lib.log_mel(wave, mel_config),
    "captions": _captions(attrs, rng),
    "tags": tags_of(attrs),
    "label": LABEL_NAMES.index(attrs["instrument"]),
  }


def make_record_fn(mel_config: dict[str, Any]) -> Callable[[ClipSpec], dict[str, Any]]:
  """The picklable work function that renders clips with these mel settings."""
  return functools.partial(make_record, mel_config=mel_config)
