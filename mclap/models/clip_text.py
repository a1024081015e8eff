"""CLIP's text encoder as mclap's `transformer` text tower: the same pre-LayerNorm causal blocks,
with q/k/v biases and CLIP's quick GELU, pooled at the end of text (its `pooler_output`).

MusCALL trains with it pretrained (`text.model: CLIPTextModel`, `openai/clip-vit-base-patch32`);
here `model.text.kind="clip"` starts the tower from a local Hugging Face directory (config.json,
model.safetensors and the tokenizer: a `CLIPModel`, whose text half is taken, or a
`CLIPTextModel`; no network). `import_muscall` maps a MusCALL checkpoint's CLIPTextModel with the
same names.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from mclap import paths
from mclap.errors import UserError
from mclap.models import torch_names
from mclap.models.text import ACTIVATIONS

# Where a CLIPModel or CLIPTextModel keeps the text encoder's arrays (under transformers 5, a
# CLIPTextModel's are at the top).
PREFIXES = ("text_model.", "")


def read_config(directory: str | pathlib.Path) -> dict[str, Any]:
  """The text encoder's settings from a Hugging Face CLIP directory's config.json, checked against
  what the tower computes."""
  remedy = "model.text.kind=clip needs a Hugging Face CLIP directory (config.json)"
  path = paths.model_file(directory, "config.json", remedy, "--config.model.text.pretrained_dir=")
  config = json.loads(path.read_text())
  kind = config.get("model_type")
  if kind not in ("clip", "clip_text_model"):
    raise UserError(f"{path}: model_type {kind!r}, not a CLIPModel or CLIPTextModel ('clip', 'clip_text_model')")
  text = config.get("text_config", {}) if kind == "clip" else config
  text = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, **text}  # transformers' CLIPTextConfig defaults.
  if text["hidden_act"] not in ACTIVATIONS:
    raise UserError(f"{path}: hidden_act {text['hidden_act']!r}; the tower computes {', '.join(ACTIVATIONS)}")
  if text["intermediate_size"] != 4 * text["hidden_size"] or text["layer_norm_eps"] != 1e-5:
    raise UserError(f"{path}: the tower computes CLIP's MLP of 4 x hidden_size and LayerNorm eps 1e-5")
  return text


def architecture(directory: str | pathlib.Path) -> dict[str, Any]:
  """`TextTransformer`'s arguments for the CLIP text encoder in `directory`."""
  c = read_config(directory)
  return dict(
    vocab_size=c["vocab_size"],
    max_len=c["max_position_embeddings"],
    width=c["hidden_size"],
    layers=c["num_hidden_layers"],
    heads=c["num_attention_heads"],
    mask="causal",
    pooling="eot",  # The end-of-text token: the last real one.
    activation=c["hidden_act"],
  )


def variables(state: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
  """`TextTransformer` variables (nested dicts) from a CLIP text encoder's arrays named
  `{prefix}embeddings...`, `{prefix}encoder.layers.N...`, `{prefix}final_layer_norm...`."""
  linear = functools.partial(torch_names.linear, state)
  norm = functools.partial(torch_names.layer_norm, state)
  blocks, i = {}, 0
  while f"{prefix}encoder.layers.{i}.layer_norm1.weight" in state:
    layer = f"{prefix}encoder.layers.{i}"
    projections = ("q_proj", "k_proj", "v_proj", "out_proj")
    blocks[i] = {
      "ln_1": norm(f"{layer}.layer_norm1"),
      "attention": {p: linear(f"{layer}.self_attn.{p}") for p in projections},
      "ln_2": norm(f"{layer}.layer_norm2"),
      "mlp_in": linear(f"{layer}.mlp.fc1"),
      "mlp_out": linear(f"{layer}.mlp.fc2"),
    }
    i += 1
  return {
    "token_embedding": {"embedding": state[f"{prefix}embeddings.token_embedding.weight"]},
    "positional_embedding": state[f"{prefix}embeddings.position_embedding.weight"],
    "blocks": blocks,
    "ln_final": norm(f"{prefix}final_layer_norm"),
  }


def read_variables(directory: str | pathlib.Path) -> dict[str, Any]:
  """The text encoder's `TextTransformer` variables from `directory`'s model.safetensors."""
  remedy = "model.text.kind=clip needs the model's weights, model.safetensors"
  path = paths.model_file(directory, "model.safetensors", remedy, "--config.model.text.pretrained_dir=")
  state = load_file(str(path))
  prefix = next((p for p in PREFIXES if f"{p}embeddings.token_embedding.weight" in state), None)
  if prefix is None:
    raise UserError(f"{path} holds no CLIP text encoder (no text_model.embeddings.token_embedding.weight)")
  return variables(state, prefix)
