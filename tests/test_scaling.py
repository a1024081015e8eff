"""Memory at scale, from XLA's memory analysis of compiled steps on the 8 simulated devices."""

import jax
import numpy as np
import pytest

from mclap import parallel
from mclap.data import mel
from mclap.training import memory

DIM = 512
F32 = 4


def _loss_temp_bytes(config, name, global_batch, devices=8, texts_per_clip=1):
  config.loss = dict(name=name, bias_init=-10.0)
  config.data.texts_per_clip = texts_per_clip
  mesh = parallel.make_mesh({"data": -1, "model": 1}, devices=jax.devices()[:devices])
  return memory.loss_step_bytes(config, mesh, global_batch, DIM)["temp"]


def test_infonce_memory_grows_with_the_global_batch_and_chunked_sigmoid_stays_with_the_local_block(tiny_config):
  """Local InfoNCE holds B_local x B_global logits (and the gathered embeddings): per local row,
  linear in the global batch. The sigmoid ring holds one B_local x B_local block and one foreign
  text block at a time, forward and backward, however many devices the batch spans."""
  for global_batch in (64, 256, 1024, 4096):
    local = global_batch // 8
    infonce = _loss_temp_bytes(tiny_config, "infonce", global_batch)
    assert local * global_batch * F32 <= infonce <= 6 * (local + DIM) * global_batch * F32, global_batch
    sigmoid = _loss_temp_bytes(tiny_config, "siglip", global_batch)
    assert sigmoid <= 6 * (local + DIM) * local * F32, global_batch
    # Three texts per clip: one B_local x 3 B_local block.
    multi = _loss_temp_bytes(tiny_config, "siglip", global_batch, texts_per_clip=3)
    assert multi <= 6 * (local + DIM) * 3 * local * F32, global_batch
  # The same local batch over 2 or 8 devices: InfoNCE's memory follows the global batch, the
  # ring's does not.
  infonce_2, infonce_8 = (_loss_temp_bytes(tiny_config, "infonce", 512 * d, d) for d in (2, 8))
  sigmoid_2, sigmoid_8 = (_loss_temp_bytes(tiny_config, "siglip", 512 * d, d) for d in (2, 8))
  assert infonce_8 > 3 * infonce_2
  assert sigmoid_8 < 1.25 * sigmoid_2  # (2 devices: XLA unrolls the one-hop loop, keeping a block less.)
  assert sigmoid_8 < infonce_8 / 5


@pytest.mark.slow
def test_feature_caching_divides_the_activation_memory_of_the_train_step(tiny_config):
  """One device, 32 clips of 20 s: activations dominate, and n sub-batches hold 1/n of them."""
  tiny_config.train.batch_size = 32
  tiny_config.data.crop_seconds = 20.0
  frames = mel.num_frames(20.0, tiny_config.data.mel)
  batch = {"mel": np.zeros((32, tiny_config.data.mel.n_mels, frames), np.float32)}
  batch.update(tokens=np.ones((32, 16), np.int32), token_mask=np.ones((32, 16), np.int32))
  mesh = parallel.make_mesh({"data": -1, "model": 1}, devices=jax.devices()[:1])
  temp = {}
  for sub_batches in (1, 4):
    tiny_config.train.sub_batches = sub_batches
    temp[sub_batches] = memory.train_step_bytes(tiny_config, mesh, batch)["temp"]
  assert temp[4] < 0.5 * temp[1]
