import os
import subprocess
import sys

import jax
import pytest
from conftest import ROOT, free_port

from mclap import parallel
from mclap.errors import ConfigError


def test_mesh_covers_all_devices_and_batches_must_split_over_data():
  mesh = parallel.make_mesh({"data": -1, "model": 2})
  assert dict(mesh.shape) == {"data": jax.device_count() // 2, "model": 2}
  parallel.check_batch_sizes(mesh, train=8, eval=4)
  with pytest.raises(ConfigError, match=r"^config.eval=6 must be a positive multiple of the 4 devices .*eval=8$"):
    parallel.check_batch_sizes(mesh, train=8, eval=6)
  with pytest.raises(ConfigError, match=r"^config.train=0 must be a positive multiple .*train=4$"):
    parallel.check_batch_sizes(mesh, train=0)
  with pytest.raises(ConfigError, match="mesh data=3 x model=2 does not cover the 8 devices"):
    parallel.make_mesh({"data": 3, "model": 2})


def test_processes_arriving_far_apart_at_their_first_collective_still_meet():
  """On CPU, JAX creates the Gloo context at the first cross-process collective and gives the
  others 30 s to arrive: a resumed two-process run died there when one process arrived later
  (CI). `initialize_distributed` now meets the others at start, and later collectives wait."""
  code = (
    "import os, time, jax; from jax.experimental import multihost_utils; from mclap import parallel\n"
    "parallel.initialize_distributed()\n"
    "time.sleep(35 * jax.process_index())  # One process arrives later.\n"
    "try:\n"
    "  multihost_utils.sync_global_devices('first')\n"
    "  print('met', flush=True)\n"
    "except Exception as e:\n"
    "  print(e, flush=True)\n"
    "os._exit(0)  # Not JAX's shutdown barrier, which waits minutes for a process that failed."
  )
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_NUM_PROCESSES": "2"}
  env["JAX_COORDINATOR_ADDRESS"] = f"localhost:{free_port()}"
  processes = [
    subprocess.Popen(
      [sys.executable, "-c", code],
      cwd=ROOT,
      env={**env, "JAX_PROCESS_ID": str(i)},
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=120)[0] for p in processes]
  assert all(out.strip().endswith("met") for out in outputs), outputs
