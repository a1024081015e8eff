"""Per-device memory of compiled computations, from XLA's memory analysis: what the scaling test
guards and `make bench` reports. Compiling is enough; nothing runs, so batches far beyond this
machine's memory can be measured."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from mclap import objectives, parallel
from mclap.errors import ConfigError
from mclap.training import trainer


def compiled_bytes(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Bytes XLA plans per device: arguments, outputs, temporaries, and their total (aliased
  (donated) buffers counted once)."""
  m = compiled.memory_analysis()
  sizes = {
    "argument": m.argument_size_in_bytes,
    "output": m.output_size_in_bytes,
    "temp": m.temp_size_in_bytes,
  }
  return {**sizes, "total": sum(sizes.values()) - m.alias_size_in_bytes}


def loss_step_bytes(config: ml_collections.ConfigDict, mesh: Mesh, global_batch: int, dim: int) -> dict[str, int]:
  """Per-device memory of the config's loss and its gradient with respect to the embeddings (the
  part of the train step that the global batch makes quadratic), for `[global_batch, dim]`
  embeddings sharded over the data axis (`data.texts_per_clip` text rows per clip), with the clip
  ids of the rows where the loss takes them (`*_ids`). For the objectives whose batch inputs are
  embeddings and ids."""
  objective = objectives.build(config)
  if not objective.embedding_inputs:
    raise ConfigError(
      f"loss memory is measured for objectives of embeddings only, not config.loss.name={config.loss.name!r}"
    )
  # The loss's other positional arguments are its replicated scalars (logit scale, SigLIP's bias).
  names = [p for p in inspect.signature(objective.loss_fn).parameters if p != "axis_name"]

  def batch_input(name: str) -> jax.ShapeDtypeStruct:
    rows = global_batch * (config.data.texts_per_clip if name.startswith("text") else 1)
    shape, dtype = ((rows,), jnp.int32) if name.endswith("_ids") else ((rows, dim), jnp.float32)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh))

  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=parallel.replicated(mesh))
  args = [batch_input(name) if i < objective.num_batch_args else scalar for i, name in enumerate(names)]
  loss = parallel.sharded_loss(objective.loss_fn, mesh, num_batch_args=objective.num_batch_args)
  differentiable = tuple(i for i, name in enumerate(names) if not name.endswith("_ids"))
  step = jax.jit(jax.value_and_grad(loss, argnums=differentiable))
  return compiled_bytes(step.lower(*args).compile())


def train_step_bytes(config: ml_collections.ConfigDict, mesh: Mesh, batch: dict) -> dict[str, int]:
  """Per-device memory of the config's whole train step (towers, loss, backward, update) on
  `batch` (host arrays; only their shapes matter)."""
  tx = trainer.make_optimizer(config, 1000)
  model_def, state = trainer.init_state(config, mesh, tx)
  step = trainer.make_train_step(config, model_def, tx, mesh)
  return compiled_bytes(step.lower(state, parallel.to_global(batch, mesh)).compile())
