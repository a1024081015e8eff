"""Flax NNX towers and the dual encoder; `build_model(config, ...)` is the one constructor."""

from mclap.models.dual_encoder import DualEncoder, build_model, frozen_filter, load_pretrained

__all__ = ["DualEncoder", "build_model", "frozen_filter", "load_pretrained"]
