import jax
import pytest

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
