"""Abstract TPU topologies for ahead-of-time compilation on any host.

libtpu compiles for the abstract devices of ``jax.experimental.topologies``; the mesh over them is
built by ``postcam_jax.parallel.make_mesh``, the same builder a training run uses, so a plan
prices the device order the trainer gets.
"""

import functools
import math
import os

import jax
from jax.experimental import topologies

from postcam_jax import parallel
from postcam_jax.parallel import chips

# Several processes (pytest workers, sweeps) may load libtpu at once: only compilation happens.
# Read when libtpu is first loaded (the first topology below), not at import.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

GIB = 1024 ** 3


@functools.cache
def topology_devices(topology: str) -> tuple:
  """Abstract TPU devices of ``topology`` ('v5p:2x2x2', 'v6e:2x4'); a single chip needs the
  chips-per-host bounds spelled out."""
  chips.chip_for_topology(topology)
  dims = topology.split(":", 1)[1] if ":" in topology else ""
  try:
    shape = [int(x) for x in dims.split("x")]
  except ValueError:
    raise ValueError(f"topology must look like 'v5p:2x2x2' or 'v6e:2x4'; got {topology!r}") \
        from None
  kw = {}
  if math.prod(shape) == 1:
    kw["chips_per_host_bounds"] = [1, 1, 1]
  desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kw)
  return tuple(desc.devices)


def abstract_mesh(topology: str, sizes) -> jax.sharding.Mesh:
  """The project's four-axis mesh (``parallel.make_mesh``) on the topology's devices."""
  return parallel.make_mesh(sizes, devices=topology_devices(topology))
