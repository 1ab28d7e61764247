"""The one table of logical-to-mesh axis rules and the helpers that apply it.

Model code names axes logically (``embed``, ``mlp``, ``heads``, ``batch``, ``length`` ...) and
never names a mesh axis. This module owns the mapping (MaxText style): :data:`LOGICAL_RULES`
from logical names to the axes of the mesh that ``postcam_jax.parallel.mesh`` builds.
"""

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

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
    ("conv_in", None),          # DA3 head: conv input channels
    ("conv_out", None),         # DA3 head: conv output channels
    # Activations.
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),     # the main token sequence
    ("kv_length", None),        # keys/values kept whole (text, camera, render)
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("frames", ("data", "fsdp", "sequence")),  # DA3: the views (frames) of one video
)


def rules_dict(rules=LOGICAL_RULES) -> dict:
  """The rules as a dict: logical name -> mesh axis, tuple of mesh axes, or None."""
  return dict(rules)


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
