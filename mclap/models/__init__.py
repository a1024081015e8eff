"""Flax NNX towers and the dual encoder; `build_model(spec, rngs)` is the one constructor, the spec
comes from a config once (`spec_from_config`) and is stored with what is trained or exported."""

from mclap.models.dual_encoder import DualEncoder, build_model
from mclap.models.spec import ModelSpec
from mclap.models.spec import from_config as spec_from_config

__all__ = ["DualEncoder", "ModelSpec", "build_model", "spec_from_config"]
