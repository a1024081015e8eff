"""PyTorch module parameters as mclap's variables: the layouts that pretrained towers (read by the
models) and the importers of whole checkpoints (`mclap.tools`) both take apart."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def linear(state: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  """An `nnx.Linear`'s variables from torch's `[out, in]` weight (and bias, if any)."""
  out = {"kernel": state[f"{name}.weight"].T}
  if f"{name}.bias" in state:
    out["bias"] = state[f"{name}.bias"]
  return out


def layer_norm(state: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  return {"scale": state[f"{name}.weight"], "bias": state[f"{name}.bias"]}


def batch_norm(state: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  """mclap's `layers.BatchNorm` variables (running statistics included) from a torch BatchNorm."""
  return {
    "scale": state[f"{name}.weight"],
    "bias": state[f"{name}.bias"],
    "mean": state[f"{name}.running_mean"],
    "var": state[f"{name}.running_var"],
  }
