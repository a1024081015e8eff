import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from flax import nnx
from scipy.special import softmax

from mclap import cli
from mclap.data import mel
from mclap.errors import ConfigError
from mclap.models import audio, build_model, layers, spec_from_config, text

VOCAB = 30522  # The MiniLM WordPiece vocabulary.


def build(config, vocab_size=VOCAB):
  return build_model(spec_from_config(config, vocab_size), nnx.Rngs(0))


def muscall_config(crop_seconds=20.0):
  config = cli.load_config(str(ROOT / "configs/muscall.py"))
  config.data.crop_seconds = crop_seconds
  config.train.dtype = "float32"
  return config


def expected_parameter_count(c) -> int:
  """Hand-derived count of the MusCALL architecture (batch-norm statistics are not parameters)."""
  w, out = c.model.audio.width, c.model.audio.output_dim
  count = 9 * (w // 2) + 9 * (w // 2) ** 2 + 9 * (w // 2) * w + 2 * (w // 2 + w // 2 + w)  # Stem convs + BN.
  inplanes = w
  for stage, depth in enumerate(c.model.audio.layers):
    p = w * 2**stage
    for i in range(depth):
      count += inplanes * p + 9 * p * p + p * 4 * p + 2 * (p + p + 4 * p)
      if i == 0 and (stage > 0 or inplanes != 4 * p):
        count += inplanes * 4 * p + 2 * 4 * p
      inplanes = 4 * p
    grid = audio.resnet_output_grid(c.data.mel.n_mels, mel.num_frames(c.data.crop_seconds, c.data.mel))
  count += (grid[0] * grid[1] + 1) * inplanes + 3 * (inplanes**2 + inplanes) + inplanes * out + out  # Attn pool.
  tw, layers, length = c.model.text.width, c.model.text.layers, c.data.max_tokens
  block = 2 * tw + 4 * (tw * tw + tw) + 2 * tw + (tw * 4 * tw + 4 * tw) + (4 * tw * tw + tw)
  count += VOCAB * tw + length * tw + layers * block + 2 * tw
  return count + out * c.model.projection_dim + tw * c.model.projection_dim + 1  # Projections, logit scale.


def test_muscall_parameter_count():
  config = muscall_config()
  model = nnx.eval_shape(lambda: build(config))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert count == expected_parameter_count(config) == 31_109_641
  assert audio.resnet_output_grid(128, 626) == (4, 19)


@pytest.mark.parametrize("seconds, frames", [(10.0, 313), (20.0, 626)])
def test_output_shapes_for_10_and_20_second_crops(seconds, frames):
  """Traced, not run (the shapes and the input check are the same)."""
  config = muscall_config(seconds)
  model = nnx.eval_shape(lambda: build(config))
  assert mel.num_frames(seconds, config.data.mel) == frames
  a = nnx.eval_shape(lambda m: m.embed_audio(jnp.zeros((2, 128, frames)), train=True), model)
  t = nnx.eval_shape(lambda m: m.embed_text(jnp.ones((2, 77), jnp.int32), jnp.ones((2, 77), jnp.int32)), model)
  assert a.shape == t.shape == (2, 512) and a.dtype == jnp.float32
  with pytest.raises(ConfigError, match=rf"built for mels of shape \[128, {frames}\].*got \[128, 400\]"):
    nnx.eval_shape(lambda m: m.embed_audio(jnp.zeros((2, 128, 400))), model)


def test_logit_scale_starts_at_1_over_0_07_and_is_clamped_at_100():
  # Only the scale is computed: XLA drops the other initialisers from the compiled function.
  np.testing.assert_allclose(jax.jit(lambda: build(muscall_config(10.0), 100).logit_scale())(), 1 / 0.07, rtol=1e-6)
  model = nnx.eval_shape(lambda: build(muscall_config(10.0), 100))
  model.logit_scale_param = nnx.Param(jnp.asarray(10.0))
  assert float(model.logit_scale()) == pytest.approx(100.0)


def test_attention_pool_equals_clip_full_attention_in_numpy():
  rngs = nnx.Rngs(0)
  pool = audio.AttentionPool(tokens=6, width=8, heads=2, output_dim=5, dtype=jnp.float32, rngs=rngs)
  x = np.random.default_rng(0).normal(size=(3, 2, 3, 8)).astype(np.float32)
  ours = np.asarray(pool(jnp.asarray(x)))

  att = pool.attention
  w = lambda layer: (np.asarray(layer.kernel[...]), np.asarray(layer.bias[...]))  # noqa: E731
  tokens = x.reshape(3, 6, 8)
  tokens = np.concatenate([tokens.mean(1, keepdims=True), tokens], 1) + np.asarray(pool.positional_embedding[...])
  heads = lambda y: y.reshape(3, 7, 2, 4).transpose(0, 2, 1, 3)  # noqa: E731
  (qk, qb), (kk, kb), (vk, vb), (ok, ob) = w(att.q_proj), w(att.k_proj), w(att.v_proj), w(att.out_proj)
  q, k, v = heads(tokens @ qk + qb), heads(tokens @ kk + kb), heads(tokens @ vk + vb)
  full = softmax(q @ k.transpose(0, 1, 3, 2) / 2.0, axis=-1) @ v  # Every token attends (CLIP), head dim 4.
  expected = full.transpose(0, 2, 1, 3).reshape(3, 7, 8)[:, 0] @ ok + ob  # Output of the mean token.
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def _text(mask_kind, pooling="eot"):
  return text.TextTransformer(
    vocab_size=50,
    max_len=10,
    width=16,
    layers=2,
    heads=2,
    mask=mask_kind,
    pooling=pooling,
    remat="none",
    dtype=jnp.float32,
    rngs=nnx.Rngs(0),
  )


def test_causal_mask_ignores_later_tokens_and_padding():
  model = _text("causal")
  tokens = jnp.array([[3, 4, 5, 6, 7, 0, 0, 0]])
  mask = jnp.array([[1, 1, 1, 0, 0, 0, 0, 0]])  # Three real tokens; the rest are padding.
  changed = tokens.at[0, 4].set(9)
  np.testing.assert_allclose(model(tokens, mask), model(changed, mask), atol=1e-6)
  np.testing.assert_allclose(model(tokens, mask), model(tokens[:, :3], mask[:, :3]), atol=1e-6)


def test_bidirectional_mask_sees_later_tokens_but_not_padding():
  model = _text("bidirectional", pooling="first")
  tokens, mask = jnp.array([[3, 4, 5, 6]]), jnp.array([[1, 1, 1, 0]])
  assert not np.allclose(model(tokens, mask), model(tokens.at[0, 2].set(9), mask))
  np.testing.assert_allclose(model(tokens, mask), model(tokens.at[0, 3].set(9), mask), atol=1e-6)


def test_remat_changes_nothing_but_memory():
  config = muscall_config(5.0)
  config.model.audio.update(width=8, layers=(1, 1, 1, 1))
  config.model.text.update(layers=1, width=32, heads=2)
  batch = (
    jnp.asarray(np.random.default_rng(0).normal(size=(2, 128, 157)), jnp.float32),
    jnp.ones((2, 77), jnp.int32),
    jnp.ones((2, 77), jnp.int32),
  )

  def loss_and_grads(remat):
    config.train.remat = remat
    graphdef, params, rest = nnx.split(build(config, 100), nnx.Param, ...)

    def loss(p):
      m = nnx.merge(graphdef, p, rest, copy=True)
      return (m.embed_audio(batch[0], train=True) * m.embed_text(batch[1], batch[2])).sum()

    return jax.jit(jax.value_and_grad(loss))(params)

  v0, g0 = loss_and_grads("none")
  for policy in ("dots", "full"):
    v1, g1 = loss_and_grads(policy)
    np.testing.assert_allclose(v0, v1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)
  with pytest.raises(ConfigError, match="train.remat='some'"):
    loss_and_grads("some")


def test_a_text_activation_it_does_not_know_is_a_config_error():
  config = muscall_config(5.0)
  config.model.text.update(layers=1, width=64, heads=2, activation="relu")
  with pytest.raises(ConfigError, match=r"config.model.text.activation='relu'; use gelu or quick_gelu"):
    build_model(spec_from_config(config), nnx.Rngs(0))


def test_bfloat16_compute_keeps_float32_parameters_and_close_outputs():
  config = muscall_config(5.0)
  config.model.audio.update(width=8, layers=(1, 1, 1, 1))
  config.model.text.update(layers=1, width=64, heads=2)
  mel_in = jnp.asarray(np.random.default_rng(0).normal(-40, 10, size=(2, 128, 157)), jnp.float32)
  tokens = jnp.asarray(np.random.default_rng(1).integers(1000, 2000, size=(2, 77)), jnp.int32)
  outputs = {}
  for dtype in ("float32", "bfloat16"):
    config.train.dtype = dtype
    model = build(config)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
    embed = nnx.jit(lambda m: (m.embed_audio(mel_in, train=True), m.embed_text(tokens, jnp.ones_like(tokens))))
    outputs[dtype] = embed(model)
  for full, half in zip(outputs["float32"], outputs["bfloat16"]):
    assert half.dtype == jnp.float32  # Embeddings are normalised in float32.
    np.testing.assert_allclose(half, full, atol=5e-2)
    assert float(jnp.mean(jnp.sum(half * full, -1))) > 0.99  # Cosine similarity of the two.


def test_heads_mlp_identity_and_the_text_width_as_joint_space():
  config = cli.load_config(str(ROOT / "configs/muscall.py:demo"))
  config.model.audio.head = dict(kind="mlp", hidden=(32, 16), activation="relu")
  config.model.text.head = dict(kind="identity", hidden=(), activation="relu")
  config.model.projection_dim = 0  # The text tower's width (128 in the demo).
  model = build(config)
  shapes = [layer.kernel.shape for layer in model.audio_projection.layers[::2]]
  assert shapes == [(256, 32), (32, 16), (16, 128)] and model.audio_projection.layers[1] is jax.nn.relu
  tokens = jnp.ones((2, 32), jnp.int32)
  features = model.text(tokens, tokens)
  np.testing.assert_allclose(
    model.embed_text(tokens, tokens), features / np.linalg.norm(features, axis=-1, keepdims=True), rtol=1e-6
  )
  config.model.projection_dim = 64
  with pytest.raises(ConfigError, match="identity head keeps the tower's 128 dimensions"):
    build(config)


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
def test_batch_norm_computes_what_flax_batch_norm_does(dtype, tolerance):
  rng = np.random.default_rng(0)
  ours = layers.BatchNorm(12, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
  flax_bn = nnx.BatchNorm(12, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
  for name in ("scale", "bias", "mean", "var"):
    value = jnp.asarray(rng.uniform(0.5, 1.5, 12), jnp.float32)
    getattr(ours, name).value = value
    getattr(flax_bn, name).value = value
  for train in (True, True, False):
    x = jnp.asarray(rng.normal(1.0, 3.0, (6, 5, 7, 12)), dtype)
    np.testing.assert_allclose(
      np.asarray(ours(x, use_running_average=not train), np.float32),
      np.asarray(flax_bn(x, use_running_average=not train), np.float32),
      rtol=tolerance,
      atol=tolerance,
    )
    for name in ("mean", "var"):  # Running averages move alike (and stay put in inference).
      np.testing.assert_allclose(getattr(ours, name).value, getattr(flax_bn, name).value, rtol=1e-6)


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_masked_attention_equals_numpy(dtype, tolerance):
  """Causal and padding mask together, as the text towers use them; float32 softmax under bf16."""
  att = layers.Attention(16, 4, dtype=dtype, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(2, 6, 16)).astype(np.float32)
  valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  mask = np.tril(np.ones((6, 6), bool))[None, None] & valid[:, None, None, :]
  ours = np.asarray(att(jnp.asarray(x, dtype), jnp.asarray(x, dtype), jnp.asarray(mask)), np.float32)

  w = lambda layer: (np.asarray(layer.kernel[...], np.float32), np.asarray(layer.bias[...], np.float32))  # noqa: E731
  (qk, qb), (kk, kb), (vk, vb), (ok, ob) = w(att.q_proj), w(att.k_proj), w(att.v_proj), w(att.out_proj)
  heads = lambda y: y.reshape(2, 6, 4, 4).transpose(0, 2, 1, 3)  # noqa: E731
  q, k, v = heads(x @ qk + qb), heads(x @ kk + kb), heads(x @ vk + vb)
  logits = np.where(mask, q @ k.transpose(0, 1, 3, 2) / 2.0, -np.inf)
  expected = (softmax(logits, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(2, 6, 16) @ ok + ob
  np.testing.assert_allclose(ours, expected, rtol=tolerance, atol=tolerance)


def test_a_seed_builds_the_model_it_built_with_flax_batch_norm(monkeypatch):
  """mclap's BatchNorm draws the random keys Flax's did, so every later layer starts the same."""
  c = muscall_config(2.0)
  ours = nnx.state(build(c, 100), nnx.Param)
  monkeypatch.setattr(audio, "BatchNorm", lambda n, **kw: nnx.BatchNorm(n, **kw))
  flax_built = nnx.state(build(c, 100), nnx.Param)
  jax.tree.map(np.testing.assert_array_equal, ours, flax_built)
