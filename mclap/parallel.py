"""The device mesh, host batches as global arrays on it, and the data-parallel wrappers of the step."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mclap.errors import ConfigError

DATA, MODEL = "data", "model"


def initialize_distributed() -> None:
  """Joins this process to a multi-process job, if it was launched as one; call before touching
  devices. `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` name the job
  explicitly (`PROCESSES=N launch/local.sh`, any hand-made launch); `MCLAP_DISTRIBUTED=1` lets JAX
  detect it (Cloud TPU pod slices, SLURM, Open MPI: launch/tpu_vm.sh, launch/slurm_gpu.sbatch).
  Without either, a single process uses its local devices."""
  env = os.environ
  if env.get("JAX_NUM_PROCESSES"):
    missing = [k for k in ("JAX_COORDINATOR_ADDRESS", "JAX_PROCESS_ID") if not env.get(k)]
    if missing:
      raise ConfigError(f"JAX_NUM_PROCESSES is set but {' and '.join(missing)} not; set all three (or none)")
    jax.distributed.initialize(
      env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
    )
  elif env.get("MCLAP_DISTRIBUTED") == "1":
    jax.distributed.initialize()
  else:
    return
  # On CPU the first cross-process collective creates the Gloo context and waits only 30 s for the
  # others; meeting here, while the processes are in step, creates it. Later collectives wait as
  # long as a process compiles or reads.
  multihost_utils.sync_global_devices("mclap: processes joined")


def make_mesh(mesh_config: ml_collections.ConfigDict | dict, devices=None) -> Mesh:
  """Mesh ('data', 'model') over all devices of all processes; `data=-1` takes what `model` leaves.

  Axes are Auto: the towers are jitted with sharding propagation, and the losses that need
  cross-device communication are written explicitly with `shard_map` (`sharded_loss`).
  """
  devices = jax.devices() if devices is None else devices
  model = int(mesh_config["model"])
  data = int(mesh_config["data"])
  data = len(devices) // model if data == -1 else data
  if data * model != len(devices):
    raise ConfigError(
      f"mesh data={mesh_config['data']} x model={model} does not cover the {len(devices)} devices; "
      "set --config.mesh.data=-1 to use them all"
    )
  return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def check_batch_sizes(mesh: Mesh, **batch_sizes: int) -> None:
  """Global batch sizes must split evenly over the mesh's data axis."""
  devices = mesh.shape[DATA]
  for key, size in batch_sizes.items():
    if not isinstance(size, int) or size <= 0 or size % devices:
      fit = devices * max(-(-size // devices), 1) if isinstance(size, int) else devices
      raise ConfigError(
        f"config.{key}={size!r} must be a positive multiple of the {devices} devices on the mesh's data axis "
        f"(global batch, over all devices and processes); e.g. --config.{key}={fit}"
      )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over 'data', the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# Smaller arrays (biases, norms, scalars) stay replicated under FSDP: splitting them saves little
# memory and costs a collective each.
FSDP_MIN_SIZE = 2**12


def fsdp_spec(shape: tuple[int, ...], devices: int) -> P:
  """Splits an array over 'data' along its largest dimension that the axis divides; P() when it is
  small or no dimension divides."""
  if devices == 1 or math.prod(shape) < FSDP_MIN_SIZE:
    return P()
  candidates = [d for d in sorted(range(len(shape)), key=lambda d: -shape[d]) if shape[d] % devices == 0]
  if not candidates:
    return P()
  spec = [None] * len(shape)
  spec[candidates[0]] = DATA
  return P(*spec)


def state_sharding(mesh: Mesh, state_shapes, fsdp: bool):
  """Shardings of a train state: replicated (data parallelism), or with `fsdp` each large array
  (parameters and the optimizer moments alike) split over the data axis, so that per-device state
  memory falls with the number of devices. Under jit, XLA gathers a parameter where a layer needs it
  and reduce-scatters its gradient; the values are those of data parallelism."""
  if not fsdp:
    return jax.tree.map(lambda _: replicated(mesh), state_shapes)
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, mesh.shape[DATA])), state_shapes)


def sharded_loss(loss_fn: Callable, mesh: Mesh, num_batch_args: int = 2) -> Callable:
  """Runs `loss_fn(*batch_args, *replicated_args, axis_name='data')` per device under `shard_map`.

  The first `num_batch_args` arguments are sharded on their leading axis; the rest replicated.
  """

  def wrapped(*args):
    specs = tuple(P(DATA) if i < num_batch_args else P() for i in range(len(args)))
    fn = jax.shard_map(functools.partial(loss_fn, axis_name=DATA), mesh=mesh, in_specs=specs, out_specs=P())
    return fn(*args)

  return wrapped


# Batch keys the train step reads: the towers' inputs, the clip ids (the records' indices; SigLIP's
# positives), and keys only in some objectives' batches (SSL, triplet, matching).
MODEL_INPUTS = (
  "mel", "tokens", "token_mask", "index", "mel_view2", "other_tokens", "other_token_mask", "other_match"
)  # fmt: skip


def to_global(batch: dict[str, np.ndarray], mesh: Mesh, keys: Iterable[str] = MODEL_INPUTS) -> dict[str, jax.Array]:
  """This process's share of a batch -> global arrays sharded on 'data'."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in keys if k in batch}


# Token arrays and the masks that say which of their positions are real.
TOKEN_MASKS = {
  "tokens": "token_mask",
  "token_mask": "token_mask",
  "other_tokens": "other_token_mask",
  "other_token_mask": "other_token_mask",
}


def trim_token_padding(batch: dict[str, np.ndarray], bucket: int) -> dict[str, np.ndarray]:
  """Drops the trailing token positions that are padding in every text of the global batch,
  keeping the longest text rounded up to a multiple of `bucket` (0: keep all). Exact: no real
  token attends to trailing padding (it is masked, or after it under a causal mask), and pooling
  reads real tokens only. Short captions then cost the text tower a fraction of `max_tokens`;
  each distinct length compiles the step once, and every process keeps the same length."""
  present = [k for k in TOKEN_MASKS if k in batch]
  if not bucket or not present:
    return batch
  full = batch["tokens"].shape[-1]
  longest = max(int(np.max(batch[TOKEN_MASKS[k]].sum(axis=-1), initial=0)) for k in present)
  if jax.process_count() > 1:
    longest = int(np.max(multihost_utils.process_allgather(np.int32(longest))))
  length = min(-(-max(longest, 1) // bucket) * bucket, full)
  return {k: v[..., :length] if k in TOKEN_MASKS else v for k, v in batch.items()}
