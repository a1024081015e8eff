"""A pretrained CLIP text encoder as the text tower (`model.text.kind=clip`, MusCALL's
`CLIPTextModel`): read from a Hugging Face CLIPModel directory, it computes what transformers
computed from it (tests/data/make_clip_hf_fixture.py)."""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import ROOT, hub_cache
from flax import nnx

from mclap import cli
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import ConfigError, UserError
from mclap.models import build_model, spec_from_config, weights

CLIP_DIR = ROOT / "tests" / "data" / "clip_hf"


def clip_config(directory=CLIP_DIR):
  config = cli.load_config("configs/muscall.py:demo")
  config.model.text.update(kind="clip", pretrained_dir=str(directory))
  config.data.max_tokens = 77
  return config


def test_the_clip_text_tower_computes_what_transformers_computed():
  reference = np.load(ROOT / "tests" / "data" / "clip_hf_reference.npz")
  config = clip_config()
  spec = spec_from_config(config)
  assert spec.text == dict(
    kind="transformer", vocab_size=520, max_len=77, width=64, layers=2, heads=2, mask="causal", pooling="eot",
    activation="quick_gelu",
  )  # fmt: skip
  model = build_model(spec, nnx.Rngs(0))
  weights.load_pretrained(model, config)
  tokens, mask = tokenizer_lib.for_config(config)(list(reference["texts"]))  # The directory's own tokenizer.
  np.testing.assert_array_equal(np.where(mask == 1, tokens, 0), reference["ids"])
  np.testing.assert_allclose(model.text_features(tokens, mask), reference["pooler_output"], atol=2e-5)


def test_a_clip_directory_that_is_not_one_is_named(tmp_path):
  config = clip_config("")
  with pytest.raises(ConfigError, match=r"kind=clip needs config.model.text.pretrained_dir"):
    spec_from_config(config)
  config = clip_config()
  config.data.max_tokens = 78
  with pytest.raises(ConfigError, match=r"max_tokens=78 is longer than the pretrained text tower's 77 positions"):
    spec_from_config(config)
  config = clip_config()
  config.data.tokenizer_dir = str(tokenizer_lib.default_tokenizer_dir())  # MiniLM's WordPiece: ids past CLIP's.
  with pytest.raises(ConfigError, match=r"has 30522 tokens, the pretrained text tower 520: tokenize with the tower"):
    spec_from_config(config)
  shutil.copytree(CLIP_DIR, tmp_path / "clip")
  settings = json.loads((tmp_path / "clip" / "config.json").read_text())
  settings["text_config"]["hidden_act"] = "relu"
  (tmp_path / "clip" / "config.json").write_text(json.dumps(settings))
  with pytest.raises(UserError, match=r"config.json: hidden_act 'relu'; the tower computes gelu, quick_gelu"):
    spec_from_config(clip_config(tmp_path / "clip"))
  (tmp_path / "clip" / "config.json").write_text(json.dumps({**settings, "model_type": "bert"}))
  with pytest.raises(UserError, match=r"model_type 'bert', not a CLIPModel or CLIPTextModel"):
    spec_from_config(clip_config(tmp_path / "clip"))


def test_a_hub_cache_folder_is_the_model_it_holds(tmp_path):
  """`huggingface-cli download openai/clip-vit-base-patch32` without `--local-dir` leaves the model
  in `models--openai--clip-vit-base-patch32/snapshots/<commit>/`: the folder users pass works."""
  cache = hub_cache(CLIP_DIR, tmp_path / "hub", "openai/clip-vit-base-patch32")
  config, direct = clip_config(cache), clip_config()
  spec = spec_from_config(config)
  assert spec == spec_from_config(direct)
  models = [build_model(spec, nnx.Rngs(0)), build_model(spec, nnx.Rngs(1))]
  weights.load_pretrained(models[0], config)
  weights.load_pretrained(models[1], direct)
  for a, b in zip(*(jax.tree.leaves(nnx.state(m.text)) for m in models)):
    np.testing.assert_array_equal(a, b)
  texts = ["calm piano", "loud drums"]
  np.testing.assert_array_equal(tokenizer_lib.for_config(config)(texts), tokenizer_lib.for_config(direct)(texts))
  # The folder above the model's (here: the hub cache itself) is named with the one it holds.
  with pytest.raises(
    UserError, match=rf"hub is not a folder with \S+; did you mean --config.model.text.pretrained_dir={cache}\?$"
  ):
    spec_from_config(clip_config(tmp_path / "hub"))
