"""The pieces of training: state, optimizer, the jitted sharded step, and batched embedding.

The train state holds the model and its objective's heads (`Trainable`), split into (graphdef,
frozen, [discriminator,] params, batch_stats, constants): only
`params` get gradients and optimizer state; `frozen` (pretrained parts that are not trained) rides
along in the state but is loaded from its source, not checkpointed. The step is a pure function of
plain pytrees, jitted once over the mesh with the state donated. The towers run
with sharding propagation over the data-sharded batch (so batch norm statistics are those of the
global batch and the sharded step equals the single-device one); the loss runs under `shard_map`
with gathered embeddings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mclap import objectives, parallel
from mclap.errors import ConfigError
from mclap.models import DualEncoder, ModelSpec, build_model, spec_from_config, weights
from mclap.training import text_cache


class Trainable(nnx.Module):
  """What a train state holds: the model and the heads its objective trains beside it."""

  def __init__(self, model: DualEncoder, heads: nnx.Dict):
    self.model, self.heads = model, heads


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """What is static about the trained model: its spec and objective, its graph, its untrained
  constants, and where the train state lives on the mesh (replicated, or split by FSDP)."""

  spec: ModelSpec
  objective: objectives.Objective
  graphdef: Any
  constants: Any
  state_sharding: Any

  def merge(self, state: dict[str, Any], params=None, discriminator=None, tables=None) -> Trainable:
    """The model and heads of a train state (with `params` or `discriminator` in place of the
    state's, to differentiate; with frozen text encoders' `tables` in their place, `text_cache`)."""
    # Fresh Variables (copy=True): batch norm updates its statistics inside `jax.grad`, which NNX
    # forbids on Variables created outside that trace.
    replaced = {"params": params, "discriminator": discriminator}
    names = _group_names("discriminator" in state)
    groups = [state[k] if replaced.get(k) is None else replaced[k] for k in names]
    trainable = nnx.merge(self.graphdef, *groups, self.constants, copy=True)
    text_cache.look_up(trainable, tables or {})
    return trainable


def _group_names(has_discriminator: bool) -> list[str]:
  """The train state's model groups, in the order of `_filters`."""
  return ["frozen", *(["discriminator"] if has_discriminator else []), "params", "batch_stats"]


def frozen_filter(config: ml_collections.ConfigDict, objective: objectives.Objective):
  """An NNX filter of the parameters that are not trained (no gradient, no optimizer state): the
  objective's frozen heads (a sentence encoder), any tower with `freeze`, and a BERT tower's
  embeddings and first `freeze_layers` layers."""
  audio_frozen = bool(config.model.audio.get("freeze", False))
  text_cfg = config.model.text
  text_frozen = bool(text_cfg.get("freeze", False))
  frozen_layers = int(text_cfg.get("freeze_layers", 0)) if text_cfg.kind == "bert" else 0

  def is_frozen(path: tuple, value: Any) -> bool:
    if not isinstance(value, nnx.Param):
      return False
    part, name = path[0], path[1]
    if part == "heads":
      return name in objective.frozen_heads
    if (name == "audio" and audio_frozen) or (name == "text" and text_frozen):
      return True
    if name == "text" and frozen_layers:
      return path[2] != "layers" or int(path[3]) < frozen_layers
    return False

  return is_frozen


def _filters(config: ml_collections.ConfigDict, objective: objectives.Objective) -> tuple:
  """NNX filters splitting the trainable into frozen, [discriminator,] trained parameters, batch
  statistics and the rest (constants)."""
  discriminator = [nnx.All(nnx.Param, nnx.PathContains("discriminator"))] if objective.discriminator else []
  return (frozen_filter(config, objective), *discriminator, nnx.Param, nnx.BatchStat, ...)


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  o = config.optim
  if o.schedule == "cosine":
    warmup = min(o.warmup_steps, total_steps - 1)  # Short runs still decay.
    return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, total_steps, 0.0)
  if o.schedule == "constant":
    return optax.join_schedules(
      [optax.linear_schedule(0.0, o.lr, o.warmup_steps), optax.constant_schedule(o.lr)], [o.warmup_steps]
    )
  raise ConfigError(f"config.optim.schedule={o.schedule!r}; use cosine or constant")


def _scale_by_tower(scales: dict[str, float]) -> optax.GradientTransformation:
  """Multiplies the updates of each tower's parameters by its factor: a lower learning rate (weight
  decay included, as it is part of AdamW's update) for a pretrained tower being fine-tuned."""

  def update(updates, state, params=None):
    del params

    def scale(path, u):
      keys = [getattr(k, "key", None) for k in path[:2]]
      return u * (scales.get(keys[1], 1.0) if keys[0] == "model" else 1.0)

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """AdamW (or SGD with momentum: Seth); weight decay on matrices and kernels only (not on biases,
  norms or the logit scale); `model.<tower>.lr_scale` scales a tower's learning rate."""
  o = config.optim
  schedule = learning_rate_schedule(config, total_steps)
  decayed = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
  if o.name == "adamw":
    base = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decayed)
  elif o.name == "sgd":
    base = optax.chain(
      optax.add_decayed_weights(o.weight_decay, mask=decayed), optax.sgd(schedule, momentum=o.momentum or None)
    )
  else:
    raise ConfigError(f"config.optim.name={o.name!r}; use adamw or sgd")
  steps = [base]
  if o.clip_norm > 0:
    steps.insert(0, optax.clip_by_global_norm(o.clip_norm))
  scales = {tower: float(config.model[tower].get("lr_scale", 1.0)) for tower in ("audio", "text")}
  if any(v != 1.0 for v in scales.values()):
    steps.append(_scale_by_tower(scales))
  return optax.chain(*steps) if len(steps) > 1 else base


def init_state(config, mesh: Mesh, tx) -> tuple[ModelDef, dict[str, Any]]:
  """Builds the model, its objective's heads and the optimizer state directly on the devices,
  replicated over the mesh or split by FSDP (`mesh.fsdp`), and loads the pretrained weights the
  config names."""
  spec = spec_from_config(config)
  objective = objectives.build(config)
  filters = _filters(config, objective)
  names = _group_names(objective.discriminator is not None)

  def build(seed: int) -> Trainable:
    rngs = nnx.Rngs(seed)
    model = build_model(spec, rngs)
    return Trainable(model, nnx.Dict(objective.heads(spec, model, rngs)))

  def init():
    _, *groups, constants = nnx.split(build(config.train.seed), *filters)
    state = dict(zip(names, groups))
    state.update(opt_state=tx.init(state["params"]), step=jnp.zeros((), jnp.int32))
    if ema_decay(config):
      state["ema"] = state["params"]
    if "discriminator" in state:
      state["discriminator_opt_state"] = tx.init(state["discriminator"])
    return state, constants

  graphdef = nnx.split(nnx.eval_shape(lambda: build(0)), *filters)[0]
  state_shapes, _ = jax.eval_shape(init)
  sharding = parallel.state_sharding(mesh, state_shapes, config.mesh.fsdp)
  state, constants = jax.jit(init, out_shardings=(sharding, parallel.replicated(mesh)))()
  model_def = ModelDef(spec, objective, graphdef, constants, sharding)
  trainable = model_def.merge(state)
  weights.load_pretrained(trainable.model, config)
  objective.load_heads(trainable.heads)
  _, *groups, _ = nnx.split(trainable, *filters)
  loaded = {k: v for k, v in zip(names, groups) if k != "discriminator"}
  if "ema" in state:  # The average starts from the weights training starts from (pretrained ones loaded).
    loaded["ema"] = jax.tree.map(jnp.copy, loaded["params"])
  return model_def, {**state, **jax.device_put(loaded, {k: sharding[k] for k in loaded})}


def ema_decay(config: ml_collections.ConfigDict) -> float:
  """`train.ema_decay` (0: no moving average), checked."""
  decay = float(config.train.get("ema_decay", 0.0))
  if not 0.0 <= decay < 1.0:
    raise ConfigError(f"config.train.ema_decay={decay}; use 0 (off) or a decay in (0, 1), e.g. 0.999")
  return decay


def evaluated_state(state: dict[str, Any]) -> dict[str, Any]:
  """The state that validation and evaluators embed with: the parameters' moving average when
  training keeps one (`train.ema_decay`), else the parameters."""
  return {**state, "params": state["ema"]} if "ema" in state else state


def make_train_step(config, model_def: ModelDef, tx, mesh: Mesh) -> Callable:
  """`step(state, batch, tables=None) -> (state, metrics)`, jitted over the mesh with the state
  donated; `tables`: the frozen text encoders' (`text_cache`), the batch's tokens their rows.

  A step whose loss or gradient is not finite changes nothing but the step counter and reports
  `skipped` = True; the training loop counts and stops such runs.

  With `train.sub_batches` = n > 1 the gradient comes from feature caching (`feature_cached_grads`):
  the loss still sees the whole global batch as negatives, while the towers only ever hold the
  activations of one n-th of it.
  """
  objective = model_def.objective
  loss_fn = parallel.sharded_loss(objective.loss_fn, mesh, num_batch_args=objective.num_batch_args)
  sub_batches = config.train.sub_batches
  decay = ema_decay(config)
  # A frozen audio tower keeps its batch-norm statistics: it always runs in inference mode.
  train_audio = not config.model.audio.get("freeze", False)
  if sub_batches > 1 and objective.discriminator is not None:
    raise ConfigError(f"config.train.sub_batches={sub_batches} does not support config.loss.name={config.loss.name!r}")

  def step(state, batch, tables=None):
    before, extra_metrics = state, {}
    if objective.discriminator is not None:
      state, extra_metrics["discriminator_loss"] = discriminator_update(state, batch, tables)
    batch = {**batch, "row": jnp.arange(batch["mel"].shape[0])}  # Global row ids (supervised contrastive).
    if sub_batches > 1:
      (loss, batch_stats), grads = feature_cached_grads(
        objective, loss_fn, model_def, state, batch, sub_batches, mesh, train_audio, tables
      )
    else:

      def compute_loss(params):
        t = model_def.merge(state, params, tables=tables)
        return loss_fn(*objective.inputs(t.model, t.heads, batch, train_audio)), nnx.state(t, nnx.BatchStat)

      (loss, batch_stats), grads = jax.value_and_grad(compute_loss, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
      **state,
      "params": optax.apply_updates(state["params"], updates),
      "batch_stats": batch_stats,
      "opt_state": opt_state,
    }
    if decay:
      new_state["ema"] = optax.incremental_update(new_state["params"], state["ema"], 1.0 - decay)
    grad_norm = optax.global_norm(grads)
    # A non-finite loss or gradient leaves the state as it was (the batch still counts as seen).
    finite = jnp.all(jnp.stack([jnp.isfinite(x) for x in (loss, grad_norm, *extra_metrics.values())]))
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, before)
    new_state["step"] = state["step"] + 1
    scale = model_def.merge(state).model.logit_scale()
    metrics = {"loss": loss, "logit_scale": scale, "grad_norm": grad_norm, "skipped": ~finite, **extra_metrics}
    return new_state, metrics

  def discriminator_update(state, batch, tables):
    """One step of the discriminator alone on this batch (GAN objectives); its batch-norm updates
    of the towers are dropped, the main step makes its own."""
    d = objective.discriminator
    d_loss_fn = parallel.sharded_loss(d.loss_fn, mesh, num_batch_args=d.num_batch_args)

    def compute(disc):
      t = model_def.merge(state, discriminator=disc, tables=tables)
      return d_loss_fn(*d.inputs(t.model, t.heads, batch, train_audio))

    loss, grads = jax.value_and_grad(compute)(state["discriminator"])
    updates, opt_state = tx.update(grads, state["discriminator_opt_state"], state["discriminator"])
    disc = optax.apply_updates(state["discriminator"], updates)
    return {**state, "discriminator": disc, "discriminator_opt_state": opt_state}, loss

  return jax.jit(step, donate_argnums=0, out_shardings=(model_def.state_sharding, parallel.replicated(mesh)))


def feature_cached_grads(
  objective: objectives.Objective,
  loss_fn: Callable,
  model_def: ModelDef,
  state,
  batch,
  sub_batches: int,
  mesh: Mesh,
  train_audio: bool,
  tables=None,
):
  """`((loss, batch_stats), grads)` of the full-batch loss, holding one sub-batch's activations at a time.

  Feature caching (Gao et al.'s GradCache): (1) embed the sub-batches one after another without
  gradients; (2) evaluate the loss on the whole gathered batch and take its gradient with respect
  to the embeddings only; (3) run each sub-batch through the towers again and back-propagate those
  embedding gradients (a vector-Jacobian product), summing the parameter gradients. The result is
  the full-batch gradient, all the in-batch negatives included, which gradient accumulation cannot
  give. Layers that mix rows of a batch differ: batch norm normalises each sub-batch by its own
  statistics, and the running statistics move by the mean of the sub-batches' updates.

  Each device's rows are split into `sub_batches` consecutive groups and sub-batch k takes group k of
  every device, so every device works on every sub-batch and no row crosses devices.
  """
  devices = mesh.shape[parallel.DATA]
  spread = NamedSharding(mesh, P(None, parallel.DATA))

  def split(x):
    rows = x.shape[0] // (devices * sub_batches)
    if rows * devices * sub_batches != x.shape[0]:
      raise ConfigError(
        f"config.train.sub_batches={sub_batches}: the per-device batch {x.shape[0] // devices} is not a multiple of it"
      )
    x = x.reshape(devices, sub_batches, rows, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x.reshape(sub_batches, devices * rows, *x.shape[3:]), spread)

  def join(x):
    x = x.reshape(sub_batches, devices, -1, *x.shape[2:]).swapaxes(0, 1)
    return x.reshape(-1, *x.shape[3:])

  def embed(params, sub_batch):
    t = model_def.merge(state, params, tables=tables)
    return objective.inputs(t.model, t.heads, sub_batch, train_audio), nnx.state(t, nnx.BatchStat)

  params = state["params"]
  sub_batch_list = {k: split(v) for k, v in batch.items()}
  num_batch = objective.num_batch_args
  inputs = jax.lax.map(lambda sub: embed(jax.lax.stop_gradient(params), sub)[0], sub_batch_list)
  inputs = [join(x) if i < num_batch else x[0] for i, x in enumerate(inputs)]  # Replicated args: same each time.
  differentiable = [jnp.issubdtype(x.dtype, jnp.floating) for x in inputs]

  def loss_of(floats):
    it = iter(floats)
    return loss_fn(*(next(it) if d else x for x, d in zip(inputs, differentiable)))

  loss, input_grads = jax.value_and_grad(loss_of)([x for x, d in zip(inputs, differentiable) if d])
  it = iter(input_grads)
  cotangents = [next(it) if d else None for d in differentiable]
  batch_cotangents = [split(c) if c is not None else None for c in cotangents[:num_batch]]
  replicated_cotangents = cotangents[num_batch:]

  def accumulate(grads, xs):
    sub_batch, sub_cotangents = xs

    def surrogate(p):
      """Sum of embeddings times their cotangents: its gradient is the VJP of the embeddings. The
      scalars shared by all sub-batches (logit scale) take 1/n of their cotangent each time."""
      sub_inputs, batch_stats = embed(p, sub_batch)
      pairs = [*zip(sub_inputs[:num_batch], sub_cotangents), *zip(sub_inputs[num_batch:], replicated_cotangents)]
      total = sum(
        (x.astype(jnp.float32) * c.astype(jnp.float32)).sum() * (1.0 if i < num_batch else 1.0 / sub_batches)
        for i, (x, c) in enumerate(pairs)
        if c is not None
      )
      return total, batch_stats

    sub_grads, batch_stats = jax.grad(surrogate, has_aux=True)(params)
    return jax.tree.map(jnp.add, grads, sub_grads), batch_stats

  grads, batch_stats = jax.lax.scan(
    accumulate, jax.tree.map(jnp.zeros_like, params), (sub_batch_list, batch_cotangents)
  )
  return (loss, jax.tree.map(lambda x: x.mean(axis=0), batch_stats)), grads


def make_validation_loss(model_def: ModelDef, mesh: Mesh) -> Callable:
  """`loss(state, batch, tables=None) -> scalar`: the objective's own loss on a batch, with the
  model in inference mode (running batch-norm statistics) and nothing updated."""
  objective = model_def.objective
  loss_fn = parallel.sharded_loss(objective.loss_fn, mesh, num_batch_args=objective.num_batch_args)

  @jax.jit
  def loss(state, batch, tables=None):
    t = model_def.merge(state, tables=tables)
    batch = {**batch, "row": jnp.arange(batch["mel"].shape[0])}
    return loss_fn(*objective.inputs(t.model, t.heads, batch, False))

  return loss
