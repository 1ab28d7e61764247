"""Model checkpoints on disk: an Orbax parameter tree plus the architecture in ``model.json``.

Layout of a converted or exported model directory::

  DIR/model.json   {"kind": "wan_dit" | "postcam" | "wan_vae" | "umt5", "config": {...}}
  DIR/params/      Orbax (StandardCheckpointer) tree of the module's parameters

Writes are atomic (``postcam_jax.core.atomic``): everything goes to a sibling staging directory
that is renamed at the end, so a failed or interrupted conversion leaves nothing behind, and
``overwrite`` replaces only a model directory (one holding ``model.json``) that holds none of the
conversion's inputs. Restores are by abstract target: parameters are created directly with their
shardings (``mesh``) and never gathered whole on one device; a non-finite parameter is refused,
naming it (:class:`NonFiniteWeightsError`).
"""

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util
from jax.experimental import multihost_utils

from postcam_jax import parallel
from postcam_jax.core import atomic
from postcam_jax.models import tokenizer as tokenizer_lib
from postcam_jax.models.da3 import DA3Config, DA3Model
from postcam_jax.models.postcam import PostCamConfig, PostCamModel
from postcam_jax.models.t5 import UMT5Config, UMT5Encoder
from postcam_jax.models.vae import WanVAE, WanVAEConfig
from postcam_jax.models.wan import WanConfig, WanModel

MODEL_JSON = "model.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"  # a text encoder's bundled tokenizer
# model.json "kind" of each model family.
DIT_KIND, POSTCAM_KIND, VAE_KIND, T5_KIND = "wan_dit", "postcam", "wan_vae", "umt5"
DA3_KIND = "da3"  # Depth Anything 3 (postcam_jax.models.da3)


class ModelDirError(ValueError):
  """A folder that is not the model directory asked for; the message names it and the fix."""


class NotAModelDirError(ModelDirError, FileNotFoundError):
  """No ``model.json``: not a converted model directory."""


class NonFiniteWeightsError(ModelDirError):
  """A parameter holds NaN or Inf; the message names the first such tensor."""


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x} (the flat key space of the conversion tables; list indices
  of ``nnx.List`` children become their decimal strings)."""
  return {"/".join(str(k) for k in path): value
          for path, value in traverse_util.flatten_dict(dict(tree)).items()}


def unflatten(flat: Mapping[str, Any]) -> dict:
  """{'a/b': x} -> {'a': {'b': x}}."""
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def abstract_params(module_factory: Callable[[], nnx.Module]) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat key -> ShapeDtypeStruct of a module's parameters, with nothing allocated."""
  abstract = nnx.eval_shape(module_factory)
  state = nnx.state(abstract, nnx.Param)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flatten(nnx.to_pure_dict(state)).items()}


def random_params(module_factory: Callable[[], nnx.Module], seed: int = 0) -> dict[str, np.ndarray]:
  """Flat key -> random float32 weights of a module, drawn in numpy from its abstract shapes
  (tests, benchmarks and stand-ins; eager NNX init of many small convolutions is slow on CPU):
  kernels N(0, 1/fan_in) over all but the last axis, biases 0, other vectors (norm scales) 1."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, leaf in abstract_params(module_factory).items():
    if len(leaf.shape) >= 2:
      fan_in = int(np.prod(leaf.shape[:-1]))
      out[key] = (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
    else:
      out[key] = np.full(leaf.shape, 0.0 if key.endswith("bias") else 1.0, np.float32)
  return out


def check_output_dir(output, overwrite: bool = False, inputs=()) -> str:
  """The checks of a model directory output, to run before any conversion work: see
  ``core.atomic.check_output`` (a folder replaced only with ``overwrite``, only if it holds
  ``model.json`` and none of ``inputs``)."""
  return atomic.check_output(output, overwrite=overwrite, marker=MODEL_JSON, inputs=inputs)


def save_model(output: str, *, kind: str, config: Mapping[str, Any],
               params: Mapping[str, Any], overwrite: bool = False, extra: Mapping | None = None,
               prepare: Callable[[str], None] | None = None, inputs=()):
  """Write ``params`` (flat 'a/b' keys or a nested dict of arrays) and the architecture.

  ``prepare(staging_dir)`` adds files before the parameters (e.g. the text encoder's tokenizer
  folder), so the output appears whole or not at all. ``inputs``: the paths the conversion read,
  which a replaced (``overwrite``) directory must not hold."""
  tree = params if any(isinstance(v, Mapping) for v in params.values()) else unflatten(params)
  with atomic.AtomicDirectory(output, overwrite, marker=MODEL_JSON, inputs=inputs) as tmp:
    if prepare is not None:
      prepare(tmp)
    with open(os.path.join(tmp, MODEL_JSON), "w") as f:
      json.dump({"kind": kind, "config": dict(config), **(extra or {})}, f, indent=1)
    ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(
        save_concurrent_gb=1, use_ocdbt=False, type_handler_registry=_LOW_MEMORY_HANDLERS))
    save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=_CHUNK_BYTES), tree)
    ckptr.save(os.path.join(tmp, PARAMS_DIR), args=ocp.args.PyTreeSave(tree, save_args=save_args))
    ckptr.close()
  return output


# Host memory of writing a converted model (peak RSS over the tree's own size, measured on a
# 2 GiB tree of 16 numpy arrays; docs/performance.md has the full-size numbers): Orbax's default
# numpy handler deep-copies every array before writing (+1x), OCDBT holds each array's encoded
# bytes until its single commit (+1x), and an unchunked array is encoded whole. Without the copy
# (the arrays are not touched while saving), without OCDBT (each chunk file is written and
# dropped) and in 64 MiB chunks, the save adds about a quarter of the tree instead of twice it.
_CHUNK_BYTES = 64 * 1024 ** 2
_LOW_MEMORY_HANDLERS = ocp.type_handlers.create_type_handler_registry(
    (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
    (jax.Array, ocp.type_handlers.ArrayHandler()),
    (int, ocp.type_handlers.ScalarHandler()),
    (float, ocp.type_handlers.ScalarHandler()),
    (np.number, ocp.type_handlers.ScalarHandler()),
    (str, ocp.type_handlers.StringHandler()))


def read_model_json(directory: str) -> dict:
  path = os.path.join(os.fspath(directory), MODEL_JSON)
  if not os.path.exists(path):
    raise NotAModelDirError(
        f"{directory} is not a postcam-jax model directory (no {MODEL_JSON}); convert the "
        f"PyTorch weights first with tools/convert_weights.py")
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise ModelDirError(f"{path}: unreadable ({e}); convert the model again") from None
  if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
    raise ModelDirError(f"{path}: not a postcam-jax model.json (no 'config' object); convert "
                        f"the model again")
  return meta


def restore_into(module: nnx.Module, directory: str, *, mesh=None) -> nnx.Module:
  """Restore parameters from ``directory`` into an (abstract or concrete) ``module``.

  The module's parameter metadata gives the shardings (logical axes resolved on ``mesh``), so
  every array is read straight into its shards. Dtype is the module's ``param_dtype``.
  """
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  pure = nnx.to_pure_dict(params)
  shardings = parallel.param_shardings(params, mesh) if mesh is not None else None
  flat_pure = flatten(pure)
  flat_shard = flatten(shardings) if shardings is not None else {}

  def target(key, leaf):
    sh = flat_shard.get(key)
    if sh is None:
      sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sh)

  abstract = unflatten({k: target(k, v) for k, v in flat_pure.items()})
  ckptr = ocp.StandardCheckpointer()
  path = os.path.join(os.path.abspath(os.fspath(directory)), PARAMS_DIR)
  stored = ckptr.metadata(path)
  stored_tree = stored.item_metadata if hasattr(stored, "item_metadata") else stored
  stored_keys = set(flatten(_as_dict(stored_tree)))
  want_keys = set(flat_pure)
  problems = [f"missing in checkpoint: {k}" for k in sorted(want_keys - stored_keys)]
  problems += [f"unexpected in checkpoint: {k}" for k in sorted(stored_keys - want_keys)]
  if problems:
    raise ModelDirError(f"{directory} does not match the model:\n  " + "\n  ".join(problems))
  # Orbax restores in the stored dtype unless told: ask for the module's dtype.
  restored = ckptr.restore(path, abstract)
  ckptr.close()
  bad = first_non_finite(flatten(restored))
  if bad is not None:
    raise NonFiniteWeightsError(
        f"{directory}: parameter {bad} is NaN or Inf, so every output would be too; convert the "
        f"weights again from a good checkpoint")
  nnx.replace_by_pure_dict(params, restored)
  return nnx.merge(graphdef, params, rest)


@jax.jit
def _finite_flags(leaves):
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def first_non_finite(flat: Mapping[str, Any]) -> str | None:
  """``'key[i, j, ...]'`` of the first NaN/Inf among the floating arrays of ``flat`` (flat key ->
  array, sharded or not; one compiled pass over all of them), or None."""
  keys = [k for k, v in sorted(flat.items()) if jnp.issubdtype(v.dtype, jnp.inexact)]
  if not keys:
    return None
  flags = _on_host(_finite_flags([flat[k] for k in keys]))
  if flags.all():
    return None
  key = keys[int(np.argmin(flags))]
  value = flat[key]
  first = _on_host(jax.jit(lambda x: jnp.argmin(jnp.isfinite(x).reshape(-1)))(value))
  index = np.unravel_index(int(first), value.shape)
  return f"{key}[{', '.join(str(int(i)) for i in index)}]"


def _on_host(x) -> np.ndarray:
  """A small result as a host array, also when it spans several hosts."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _as_dict(tree):
  if isinstance(tree, Mapping):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree


def cast_floating(tree, dtype):
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                      tree)


def to_numpy_flat(module: nnx.Module) -> dict[str, np.ndarray]:
  """Flat key -> host numpy array of a module's parameters (for export)."""
  pure = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  return {k: np.asarray(jax.device_get(v)) for k, v in flatten(pure).items()}


def precision_for(dtype=None, precision: str | None = None) -> str:
  """Policy name from a loader's ``dtype``/``precision`` arguments."""
  if precision is not None:
    return precision
  if dtype is None or jnp.dtype(dtype) == jnp.float32:
    return "float32"
  if jnp.dtype(dtype) == jnp.bfloat16:
    return "release"
  raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")


def load_dit(directory, dtype=jnp.float32, *, precision: str | None = None, mesh=None, **options):
  """Load a converted Wan2.1 DiT as a ``WanModel`` (``options``: remat, attention)."""
  meta = read_model_json(directory)
  _check_kind(meta, directory, DIT_KIND, "a Wan DiT")
  cfg = WanConfig.from_dict({**meta["config"], "precision": precision_for(dtype, precision),
                             **options})
  abstract = nnx.eval_shape(lambda: WanModel(cfg, rngs=nnx.Rngs(0)))
  return restore_into(abstract, directory, mesh=mesh)


def load_postcam(directory, dtype=jnp.float32, *, precision: str | None = None, mesh=None,
                 **options):
  """Load a converted PostCam as a ``PostCamModel``.

  ``dtype``: float32 (exact), bfloat16 (the release's all-bf16 sampling), or None (as stored);
  ``precision`` overrides with a policy name (float32, mixed, release). ``options`` are config
  values (remat, attention, render_rope, ...).
  """
  meta = read_model_json(directory)
  _check_kind(meta, directory, POSTCAM_KIND, "PostCam")
  if dtype is None and precision is None:
    precision = "release" if meta.get("dtype") == "bfloat16" else "float32"
  cfg = PostCamConfig.from_dict({**meta["config"], "precision": precision_for(dtype, precision),
                                 **options})
  abstract = nnx.eval_shape(lambda: PostCamModel(cfg, rngs=nnx.Rngs(0)))
  return restore_into(abstract, directory, mesh=mesh)


def _check_kind(meta: dict, directory, kind: str, what: str):
  if meta.get("kind") != kind:
    raise ModelDirError(f"{directory} holds a {meta.get('kind')!r} model, expected {kind!r} "
                        f"({what})")


def load_vae(directory, dtype=None, *, mesh=None) -> WanVAE:
  """A converted Wan-VAE as a :class:`WanVAE` (``encode`` / ``decode``) with params and compute
  in ``dtype`` (default float32, as Wan runs it), placed on ``mesh`` (replicated) if given."""
  meta = read_model_json(directory)
  _check_kind(meta, directory, VAE_KIND, "a Wan-VAE")
  cfg = WanVAEConfig.from_dict(meta["config"])
  dtype = jnp.float32 if dtype is None else dtype
  abstract = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype))
  return restore_into(abstract, directory, mesh=mesh)


def load_text_encoder(directory, dtype=None, *, mesh=None,
                      tokenizer=None) -> tokenizer_lib.TextEncoder:
  """A converted umT5 with its tokenizer, as a ``TextEncoder`` (``encode_text``).

  ``dtype``: params and compute (default: the converted dtype; Wan runs bfloat16). ``tokenizer``:
  a tokenizer folder or sentencepiece file (default ``DIR/tokenizer`` when present). ``mesh``:
  parameters are restored straight into their shards.
  """
  meta = read_model_json(directory)
  _check_kind(meta, directory, T5_KIND, "a umT5 text encoder")
  cfg = UMT5Config.from_dict(meta["config"])
  dtype = jnp.dtype(meta.get("dtype", "float32") if dtype is None else dtype)
  abstract = nnx.eval_shape(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0), dtype=dtype,
                                                param_dtype=dtype))
  model = restore_into(abstract, directory, mesh=mesh)
  bundled = os.path.join(directory, TOKENIZER_DIR)
  tokenizer = tokenizer or (bundled if os.path.isdir(bundled) else None)
  tok = tokenizer_lib.Tokenizer(tokenizer, text_len=cfg.text_len) if tokenizer else None
  return tokenizer_lib.TextEncoder(model, tok)


def load_da3(directory, dtype=None, *, mesh=None):
  """A converted Depth Anything 3 (``tools/convert_weights.py da3``) as a ``DA3Model``.

  ``dtype``: None or float32 (exact, float32 compute) or bfloat16 (the backbone computes in
  bf16; parameters stay float32). ``mesh``: parameters restored straight into their shardings.
  """
  meta = read_model_json(directory)
  _check_kind(meta, directory, DA3_KIND, "a Depth Anything 3 model")
  precision = "float32" if dtype is None or jnp.dtype(dtype) == jnp.float32 else "bfloat16"
  if precision == "bfloat16" and jnp.dtype(dtype) != jnp.bfloat16:
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
  cfg = DA3Config.from_dict({**meta["config"], "precision": precision})
  abstract = nnx.eval_shape(lambda: DA3Model(cfg, rngs=nnx.Rngs(0)))
  return restore_into(abstract, directory, mesh=mesh)
