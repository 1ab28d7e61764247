"""The one mesh: four named axes ``(data, fsdp, tensor, sequence)``, one spec parser, one builder.

The trainer, the sampler and the planner all build their mesh with :func:`make_mesh`, so the
planner prices exactly the device order a run gets: ``jax.make_mesh`` orders the devices for the
topology (real devices, or the abstract TPU devices of ``jax.experimental.topologies``).
"""

import math
from collections.abc import Mapping, Sequence

import jax

MESH_AXES = ("data", "fsdp", "tensor", "sequence")


def parse_mesh_spec(spec: str | Mapping[str, int] | None, n_devices: int) -> dict[str, int]:
  """'data=2,fsdp=4' (or a dict, or None) -> the size of every axis for ``n_devices`` devices.

  Unnamed axes are 1, except that fsdp takes the remainder when it is not named. The product
  must equal ``n_devices``.
  """
  if isinstance(spec, Mapping):
    sizes = {str(k): int(v) for k, v in spec.items()}
  else:
    sizes = {}
    for part in (spec or "").split(","):
      if not part.strip():
        continue
      name, _, value = part.partition("=")
      name, value = name.strip(), value.strip()
      if name not in MESH_AXES or not value.isdigit():
        raise ValueError(f"mesh entries are AXIS=SIZE with AXIS in {MESH_AXES}; got {part!r} in "
                         f"{spec!r}")
      sizes[name] = int(value)
  unknown = sorted(set(sizes) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"unknown mesh axis {unknown[0]!r} in {spec!r}; axes are {MESH_AXES}")
  given = math.prod(sizes.values()) if sizes else 1
  if "fsdp" not in sizes and given and n_devices % given == 0:
    sizes["fsdp"] = n_devices // given
  sizes = {a: sizes.get(a, 1) for a in MESH_AXES}
  if math.prod(sizes.values()) != n_devices:
    raise ValueError(f"mesh {mesh_spec_str(sizes)} needs {math.prod(sizes.values())} devices, "
                     f"{n_devices} are available")
  return sizes


def mesh_spec_str(sizes: Mapping[str, int]) -> str:
  """The canonical spec string of axis sizes: 'data=1,fsdp=8,tensor=1,sequence=1'."""
  return ",".join(f"{a}={sizes.get(a, 1)}" for a in MESH_AXES)


def make_mesh(spec: str | Mapping[str, int] | None = None,
              devices: Sequence | None = None) -> jax.sharding.Mesh:
  """The four-axis mesh of ``spec`` (see :func:`parse_mesh_spec`) over ``devices`` (default: all
  global devices), ordered by ``jax.make_mesh``. Axes are ``Auto``: shardings are propagated by
  the compiler outside ``shard_map`` regions."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = parse_mesh_spec(spec, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES, axis_types=auto,
                       devices=devices)
