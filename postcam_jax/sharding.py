"""The one mesh and the one table of logical-to-mesh axis rules.

Model code names axes logically (``embed``, ``mlp``, ``heads``, ``batch``, ``length`` ...) and
never names a mesh axis. This module owns the mapping (MaxText style): a mesh with named axes
``(data, fsdp, tensor, sequence)`` built by :func:`make_mesh`, and :data:`LOGICAL_RULES`.
"""

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

# Logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Parameters.
    # Model width: FSDP-sharded over fsdp and sequence together (Wan's FSDP runs over all the
    # ranks of its sequence-parallel group, wan2.1.md 5.2): a batch-1, 8-way sequence mesh still
    # holds 1/8 of the weights per device; they are gathered per use.
    ("embed", ("fsdp", "sequence")),
    ("qkv", "tensor"),          # attention projection width (heads x head_dim)
    ("mlp", "tensor"),          # FFN hidden width
    ("layers", None),           # stacked (scanned) blocks
    ("text_embed", None),       # T5 width at the text-embedding input
    ("freq", None),             # sinusoid width at the time-embedding input
    ("patch", None),            # patch volume (pt, ph, pw, c) at the patch embedding
    ("out_patch", None),        # head output (pt, ph, pw, c)
    ("modulation", None),       # the 6 (or 2) adaLN vectors
    ("norm", None),             # norm scales and biases
    ("camera_in", None),        # camera-encoder input / hidden widths
    # Activations.
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),     # the main token sequence
    ("kv_length", None),        # keys/values kept whole (text, camera, render)
    ("act_embed", None),
    ("act_heads", "tensor"),
)


def rules_dict(rules=LOGICAL_RULES) -> dict:
  """The rules as a dict: logical name -> mesh axis, tuple of mesh axes, or None."""
  return dict(rules)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, sequence: int = 1,
              devices: Sequence | None = None) -> jax.sharding.Mesh:
  """A mesh with the four named axes; the product must equal the device count.

  Without ``devices``, ``jax.make_mesh`` orders all (global) devices for the topology. Axes are
  ``Auto``: shardings are propagated by the compiler outside ``shard_map`` regions.
  """
  shape = (data, fsdp, tensor, sequence)
  devices = list(jax.devices()) if devices is None else list(devices)
  n = int(np.prod(shape))
  if n != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {n} devices, "
                     f"{len(devices)} are available")
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
  # An explicit device order (e.g. to put an axis across hosts): used as given, row-major.
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def logical_to_spec(names: Sequence[str | None] | None, rules=LOGICAL_RULES) -> P:
  """Logical axis names -> PartitionSpec of mesh axes (a mesh axis is used at most once)."""
  if names is None:
    return P()
  table = rules_dict(rules)
  used: set = set()
  out = []
  for name in names:
    axis = table.get(name) if name is not None else None
    axes = (axis,) if isinstance(axis, str) else tuple(axis or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*out)


def fit_spec(spec: P, shape, mesh) -> P:
  """Drop mesh axes that do not divide the dimension (e.g. 12 heads on an 8-way axis), and
  axes of size 1 (they split nothing; specs stay readable).

  ``mesh`` may be a concrete ``Mesh`` or an ``AbstractMesh`` (as in a jit trace).
  """
  sizes = dict(mesh.shape)
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    keep = []
    prod = 1
    for a in axes:
      if sizes[a] > 1 and dim % (prod * sizes[a]) == 0:
        keep.append(a)
        prod *= sizes[a]
    out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
  return P(*out)


def param_shardings(state, mesh, rules=LOGICAL_RULES):
  """NamedShardings for every Variable of an NNX state (a pure nested dict of the same shape)."""

  def one(var):
    names = var.get_metadata().get("out_sharding") if hasattr(var, "get_metadata") else None
    spec = logical_to_spec(names, rules) if names else P()
    return NamedSharding(mesh, fit_spec(spec, var.shape, mesh))

  shardings = jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(shardings) if isinstance(shardings, nnx.State) else shardings


def constrain(x, names: Sequence[str | None]):
  """Sharding constraint by logical names; a no-op outside a mesh context."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return x
  spec = fit_spec(logical_to_spec(names), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def mesh_from_spec(spec: str | Mapping[str, int] | None, devices=None) -> jax.sharding.Mesh:
  """'data=2,fsdp=4' (or a dict) -> mesh; unnamed axes are 1, and a single unnamed remainder
  goes to fsdp."""
  if spec is None or spec == "":
    sizes = {}
  elif isinstance(spec, str):
    sizes = {}
    for part in spec.split(","):
      k, _, v = part.partition("=")
      if k.strip() not in MESH_AXES:
        raise ValueError(f"unknown mesh axis {k!r} in {spec!r}; axes are {MESH_AXES}")
      sizes[k.strip()] = int(v)
  else:
    sizes = dict(spec)
  n = len(devices) if devices is not None else jax.device_count()
  given = int(np.prod([sizes.get(a, 1) for a in MESH_AXES]))
  if "fsdp" not in sizes and n % given == 0:
    sizes["fsdp"] = n // given
  return make_mesh(**{a: sizes.get(a, 1) for a in MESH_AXES}, devices=devices)


def put_global(tree, shardings):
  """Host arrays -> global arrays with ``shardings`` (a matching tree of NamedShardings).

  Every process must hold the same full host values (a seeded generator, a file); each one
  builds only its addressable shards, so this is the multi-host form of ``jax.device_put``.
  """

  def one(x, sh):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sh, lambda index: x[index])

  return jax.tree.map(one, tree, shardings)


def shard_module(module: nnx.Module, mesh, rules=LOGICAL_RULES) -> nnx.Module:
  """Place a concrete module's variables on ``mesh`` by their logical names (in place)."""
  state = nnx.state(module)
  pure = nnx.to_pure_dict(state)
  placed = put_global(jax.tree.map(np.asarray, pure), param_shardings(state, mesh, rules))
  nnx.replace_by_pure_dict(state, placed)
  nnx.update(module, state)
  return module


# Registers the sequence-parallel attention schemes ("sequence", "ulysses", "allgather_kv",
# "ring") with the attention dispatch. At the end of the module: it imports this one back.
from postcam_jax.models import sequence_parallel  # noqa: E402,F401

