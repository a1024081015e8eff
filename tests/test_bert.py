"""The Flax BERT tower against an independent NumPy forward pass on the all-MiniLM-L6-v2 weights."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file
from scipy.special import erf

from mclap.data.tokenizer import TextTokenizer, default_tokenizer_dir
from mclap.errors import UserError
from mclap.models import bert

MINILM = default_tokenizer_dir()
SENTENCES = [
  "A calm piano ballad in a minor key.",
  "Slow, sad piano music.",
  "Loud distorted electric guitars with fast drums and shouted vocals over a heavy riff.",
]


def _layer_norm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def numpy_bert(directory, tokens, mask):
  """BERT straight from the torch names and formulas, in float64: the token features."""
  w = {k: v.astype(np.float64) for k, v in load_file(str(pathlib.Path(directory) / "model.safetensors")).items()}
  c = json.loads((pathlib.Path(directory) / "config.json").read_text())
  eps, heads = c["layer_norm_eps"], c["num_attention_heads"]
  length = tokens.shape[1]
  x = w["embeddings.word_embeddings.weight"][tokens] + w["embeddings.position_embeddings.weight"][:length]
  x = x + w["embeddings.token_type_embeddings.weight"][0]
  x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
  additive = np.where(mask[:, None, None, :] > 0, 0.0, -np.inf)
  for i in range(c["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    dense = lambda h, n, p=p: h @ w[p + n + ".weight"].T + w[p + n + ".bias"]  # noqa: E731
    split = lambda h: h.reshape(*h.shape[:2], heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = (split(dense(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]) + additive
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    ln = lambda h, n, p=p: _layer_norm(h, w[p + n + ".weight"], w[p + n + ".bias"], eps)  # noqa: E731
    x = ln(x + dense(context, "attention.output.dense"), "attention.output.LayerNorm")
    hidden = dense(x, "intermediate.dense")
    hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))
    x = ln(x + dense(hidden, "output.dense"), "output.LayerNorm")
  return x


@pytest.fixture(scope="module")
def minilm():
  tower = bert.build_bert(MINILM, pooling="mean", remat="none", dtype=jnp.float32, rngs=nnx.Rngs(0))
  bert.load_weights(tower, MINILM)
  tokens, mask = TextTokenizer(None, 32)(SENTENCES)
  return tower, tokens, mask


def test_minilm_matches_numpy_reference(minilm):
  tower, tokens, mask = minilm
  features = numpy_bert(MINILM, tokens, mask)
  weights = mask[..., None]
  expected_mean = (features * weights).sum(1) / weights.sum(1)
  np.testing.assert_allclose(np.asarray(tower(tokens, mask)), expected_mean, atol=1e-5, rtol=0)
  tower.pooling = "cls"
  np.testing.assert_allclose(np.asarray(tower(tokens, mask)), features[:, 0], atol=1e-5, rtol=0)
  tower.pooling = "mean"


def test_sentence_embeddings_rank_paraphrases_first(minilm):
  tower, tokens, mask = minilm
  emb = np.array(tower(tokens, mask))
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  sim = emb @ emb.T
  assert sim[0, 1] > sim[0, 2] + 0.15 and sim[1, 0] > sim[1, 2] + 0.15


def test_padding_does_not_change_features(minilm):
  tower, tokens, mask = minilm
  longer_tokens, longer_mask = TextTokenizer(None, 48)(SENTENCES)
  np.testing.assert_allclose(np.asarray(tower(longer_tokens, longer_mask)), np.asarray(tower(tokens, mask)), atol=1e-5)


def test_roberta_layout_and_missing_weights_are_explained(tmp_path):
  config = json.loads((MINILM / "config.json").read_text())
  config.update(model_type="roberta", pad_token_id=1, max_position_embeddings=514, type_vocab_size=1)
  (tmp_path / "config.json").write_text(json.dumps(config))
  tower = bert.build_bert(tmp_path, pooling="cls", remat="none", dtype=jnp.float32, rngs=nnx.Rngs(0))
  assert tower.position_offset == 2  # RoBERTa numbers positions from pad_token_id + 1.
  weights = load_file(str(MINILM / "model.safetensors"))
  renamed = {f"roberta.{k}": v for k, v in weights.items() if "LayerNorm" not in k or "layer.5" not in k}
  renamed["roberta.embeddings.position_embeddings.weight"] = np.zeros((514, 384), np.float32)
  renamed["roberta.embeddings.token_type_embeddings.weight"] = np.zeros((1, 384), np.float32)
  from safetensors.numpy import save_file

  save_file(renamed, str(tmp_path / "model.safetensors"))
  with pytest.raises(UserError, match=r"lacks weights for \['layers.5.attention_norm.bias'"):
    bert.load_weights(tower, tmp_path)
