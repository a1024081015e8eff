"""Pretrained BERT-family text tower (BERT and RoBERTa layouts) in Flax NNX.

Loaded from a local Hugging Face directory (config.json + model.safetensors; no network): the
torch names are mapped onto this module, `Linear.weight` transposed into `kernel`, LayerNorm
`weight`/`bias` into `scale`/`bias`. Post-LayerNorm blocks with exact-erf GELU, as the
checkpoints were trained. The same module gives the Sentence-BERT caption embeddings of
all-MiniLM-L6-v2 (mean pooling, then L2 normalisation) used for MusCALL's loss weighting.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from mclap import paths
from mclap.errors import ConfigError, UserError
from mclap.models.layers import Attention, maybe_remat

LAYOUTS = ("bert", "roberta", "xlm-roberta")


class BertLayer(nnx.Module):
  def __init__(self, width: int, heads: int, intermediate: int, eps: float, *, dtype: Any, rngs: nnx.Rngs):
    self.attention = Attention(width, heads, dtype=dtype, rngs=rngs)
    self.attention_norm = nnx.LayerNorm(width, epsilon=eps, dtype=jnp.float32, rngs=rngs)
    self.intermediate = nnx.Linear(width, intermediate, dtype=dtype, rngs=rngs)
    self.output = nnx.Linear(intermediate, width, dtype=dtype, rngs=rngs)
    self.output_norm = nnx.LayerNorm(width, epsilon=eps, dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = self.attention_norm(x + self.attention(x, x, mask)).astype(x.dtype)
    h = jax.nn.gelu(self.intermediate(x), approximate=False)
    return self.output_norm(x + self.output(h)).astype(x.dtype)


POOLINGS = ("cls", "mean", "pooler")


class BertEncoder(nnx.Module):
  """tokens, token_mask `[batch, length]` -> features `[batch, width]`, pooled at [CLS] (`cls`),
  averaged over the real tokens (`mean`, Sentence-BERT's pooling), or [CLS] through the
  checkpoint's dense + tanh pooler (`pooler`, what CLAP projects)."""

  def __init__(
    self,
    *,
    vocab_size: int,
    max_positions: int,
    type_vocab_size: int,
    width: int,
    layers: int,
    heads: int,
    intermediate: int,
    eps: float,
    position_offset: int,
    pooling: str,
    remat: str,
    dtype: Any,
    rngs: nnx.Rngs,
  ):
    if pooling not in POOLINGS:
      raise ConfigError(f"config.model.text.pooling={pooling!r} for a BERT tower; use {', '.join(POOLINGS)}")
    self.position_offset, self.pooling, self.remat, self.dtype = position_offset, pooling, remat, dtype
    self.max_positions = max_positions
    init = nnx.initializers.normal(0.02)
    self.word_embeddings = nnx.Embed(vocab_size, width, embedding_init=init, rngs=rngs)
    self.position_embeddings = nnx.Embed(max_positions, width, embedding_init=init, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(type_vocab_size, width, embedding_init=init, rngs=rngs)
    self.embedding_norm = nnx.LayerNorm(width, epsilon=eps, dtype=jnp.float32, rngs=rngs)
    self.layers = nnx.List([BertLayer(width, heads, intermediate, eps, dtype=dtype, rngs=rngs) for _ in range(layers)])
    self.pooler = nnx.Linear(width, width, dtype=dtype, rngs=rngs) if pooling == "pooler" else None
    self.output_dim = width

  def __call__(self, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
    length = tokens.shape[1]
    if length + self.position_offset > self.max_positions:
      raise ConfigError(f"{length} tokens exceed the BERT tower's {self.max_positions} positions")
    # Right-padded batches: real tokens sit at positions offset + i (RoBERTa counts from pad + 1).
    positions = self.position_offset + jnp.arange(length)
    x = (
      self.word_embeddings(tokens) + self.position_embeddings(positions)[None] + self.token_type_embeddings.embedding[0]
    )
    x = self.embedding_norm(x).astype(self.dtype or jnp.float32)
    valid = token_mask.astype(bool)
    attend = valid[:, None, None, :]
    for layer in self.layers:
      x = maybe_remat(lambda m, y: m(y, attend), self.remat)(layer, x)
    x = x.astype(jnp.float32)
    if self.pooling == "cls":
      return x[:, 0]
    if self.pooling == "pooler":
      return jnp.tanh(self.pooler(x[:, 0]).astype(jnp.float32))
    weights = valid[..., None].astype(x.dtype)
    return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)


def read_config(directory: str | pathlib.Path) -> dict[str, Any]:
  remedy = "a pretrained text tower needs a Hugging Face directory with config.json"
  path = paths.model_file(directory, "config.json", remedy, "--config.model.text.pretrained_dir=")
  config = json.loads(path.read_text())
  if config.get("model_type") not in LAYOUTS:
    raise UserError(f"{path}: model_type {config.get('model_type')!r} is not one of {', '.join(LAYOUTS)}")
  if config.get("hidden_act", "gelu") != "gelu":
    raise UserError(f"{path}: hidden_act {config['hidden_act']!r}; only exact GELU BERT models are supported")
  return config


def architecture(directory: str | pathlib.Path) -> dict[str, Any]:
  """`BertEncoder`'s architecture arguments, from a Hugging Face directory's config.json."""
  c = read_config(directory)
  return dict(
    vocab_size=c["vocab_size"],
    max_positions=c["max_position_embeddings"],
    type_vocab_size=c.get("type_vocab_size", 2),
    width=c["hidden_size"],
    layers=c["num_hidden_layers"],
    heads=c["num_attention_heads"],
    intermediate=c["intermediate_size"],
    eps=c.get("layer_norm_eps", 1e-12),
    # RoBERTa counts positions from its padding id + 1.
    position_offset=c.get("pad_token_id", 1) + 1 if c["model_type"] != "bert" else 0,
  )


def build_bert(directory: str | pathlib.Path, *, pooling: str, remat: str, dtype: Any, rngs: nnx.Rngs) -> BertEncoder:
  """A randomly initialised tower shaped like the checkpoint in `directory` (see `load_weights`)."""
  return BertEncoder(**architecture(directory), pooling=pooling, remat=remat, dtype=dtype, rngs=rngs)


_LAYER_NAMES = {
  "attention.self.query": "attention.q_proj",
  "attention.self.key": "attention.k_proj",
  "attention.self.value": "attention.v_proj",
  "attention.output.dense": "attention.out_proj",
  "attention.output.LayerNorm": "attention_norm",
  "intermediate.dense": "intermediate",
  "output.dense": "output",
  "output.LayerNorm": "output_norm",
}
_EMBEDDING_NAMES = {
  "word_embeddings": "word_embeddings",
  "position_embeddings": "position_embeddings",
  "token_type_embeddings": "token_type_embeddings",
  "LayerNorm": "embedding_norm",
}
_IGNORED = re.compile(r"(^|\.)(lm_head|cls)\.|position_ids$|token_type_ids$")


def _variable(name: str) -> tuple[tuple[str, ...], str] | None:
  """torch name (prefix stripped) -> (module path in `BertEncoder`, variable name), or None if unused."""
  module, _, leaf = name.rpartition(".")
  if m := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", module):
    if m.group(2) not in _LAYER_NAMES:
      return None
    path = ("layers", m.group(1), *_LAYER_NAMES[m.group(2)].split("."))
  elif m := re.fullmatch(r"embeddings\.(\w+)", module):
    if m.group(1) not in _EMBEDDING_NAMES:
      return None
    path = (_EMBEDDING_NAMES[m.group(1)],)
  elif module == "pooler.dense":
    path = ("pooler",)
  else:
    return None
  if path[-1].endswith("embeddings"):
    return path, "embedding"
  if path[-1].endswith("norm"):
    return path, "scale" if leaf in ("weight", "gamma") else "bias"
  return path, "kernel" if leaf == "weight" else "bias"


def torch_variables(weights: dict[str, np.ndarray], prefix: str = "") -> tuple[dict[str, Any], list[str]]:
  """A `BertEncoder`'s parameters as nested dicts from a torch state dict (names under `prefix`,
  or under bert./roberta./model.), torch's `[out, in]` Linear weights transposed; and the names
  that have no place in it (other than known-unused ones)."""
  variables: dict[str, Any] = {}
  unexpected = []
  for full_name, array in weights.items():
    if prefix and not full_name.startswith(prefix):
      continue
    name = full_name.removeprefix(prefix) if prefix else re.sub(r"^(bert|roberta|model)\.", "", full_name)
    target = _variable(name)
    if target is None:
      if not _IGNORED.search(name):
        unexpected.append(full_name)
      continue
    path, attribute = target
    node = variables
    for part in path:
      node = node.setdefault(part, {})
    value = np.asarray(array, np.float32)
    node[attribute] = value.T if attribute == "kernel" else value
  return variables, unexpected


def load_weights(tower: BertEncoder, directory: str | pathlib.Path) -> None:
  """Copies the checkpoint's weights into `tower` (in place); every tower weight must be found."""
  remedy = "a pretrained text tower needs its weights, model.safetensors"
  path = paths.model_file(directory, "model.safetensors", remedy, "--config.model.text.pretrained_dir=")
  variables, unexpected = torch_variables(load_file(str(path)))
  if unexpected:
    raise UserError(f"{path}: unexpected weight {unexpected[0]!r} for a {', '.join(LAYOUTS)} encoder")
  missing = []
  for key, variable in nnx.to_flat_state(nnx.state(tower, nnx.Param)):
    node = variables
    for part in map(str, key):
      node = node.get(part) if isinstance(node, dict) else None
    if node is None:
      missing.append(".".join(map(str, key)))
    elif node.shape != variable[...].shape:
      raise UserError(
        f"{path}: {'.'.join(map(str, key))} has shape {list(node.shape)}, the tower expects {list(variable[...].shape)}"
      )
    else:
      variable.value = jnp.asarray(node)  # Replaced whole: `[...] =` would compile a scatter per shape.
  if missing:
    raise UserError(f"{path} lacks weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
