"""Shared conversion machinery: lazy tensor sources, table-driven key mapping, one error for all.

A conversion is: open a :class:`TensorSource` (one tensor in memory at a time for safetensors),
map every source key through a model's list of :class:`Rule` into the flat key space of an
abstract NNX state, check every key and shape, report *all* problems in one
:class:`ConversionError`, and only then write the output (see ``postcam_jax.io.model_dir``).
"""

import abc
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np


class ConversionError(ValueError):
  """Every problem found while converting, listed in one message."""

  def __init__(self, problems: list[str], source: str = ""):
    self.problems = list(problems)
    head = f"cannot convert {source}: " if source else "conversion failed: "
    lines = "\n".join(f"  - {p}" for p in self.problems)
    super().__init__(f"{head}{len(self.problems)} problem(s)\n{lines}")


# ----------------------------------------------------------------------------------------------
# Tensor sources.


class TensorSource(abc.ABC):
  """Read-only mapping key -> numpy array that loads one tensor at a time."""

  def __init__(self, description: str):
    self.description = description

  @abc.abstractmethod
  def keys(self) -> list[str]:
    """Every tensor name of the source."""

  @abc.abstractmethod
  def shape(self, key: str) -> tuple[int, ...]:
    """The stored shape of ``key``, without reading its data."""

  @abc.abstractmethod
  def get(self, key: str) -> np.ndarray:
    """The tensor ``key`` as a numpy array (bf16 through ml_dtypes)."""

  def config(self) -> dict[str, Any] | None:
    """The ``config.json`` beside the weights, when there is one."""
    return None

  def close(self):
    pass

  def __contains__(self, key):
    return key in set(self.keys())


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                       "U8": "uint8", "BOOL": "bool"}


class SafetensorsSource(TensorSource):
  """One or several ``.safetensors`` files, read tensor by tensor with plain file reads.

  The header is parsed as the format documents it (8-byte little-endian length, JSON with dtype,
  shape and byte offsets per tensor). Tensors are read with ``readinto`` rather than through the
  library's memory map, whose touched pages would count as resident memory until the file is
  closed: with the map, converting the 5.7 GB 1.3B checkpoint peaked at twice the output size.
  """

  def __init__(self, files: list[str], description: str, config_path: str | None = None):
    super().__init__(description)
    self._entries: dict[str, tuple[str, dict, int]] = {}
    self._config_path = config_path
    for f in files:
      try:
        size = os.path.getsize(f)
        with open(f, "rb") as fh:
          n = int.from_bytes(fh.read(8), "little")
          if n <= 0 or 8 + n > size:
            raise ValueError(f"header length {n} does not fit in {size} bytes")
          header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        for k, info in header.items():
          begin, end = info["data_offsets"]
          if 8 + n + end > size:
            raise ValueError(f"tensor {k!r} ends at byte {8 + n + end}, past the end of the file "
                             f"({size} bytes): the file is truncated")
          if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {k!r} has unsupported dtype {info['dtype']}")
          self._entries[k] = (f, info, 8 + n)
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError([f"{f}: unreadable safetensors file ({type(e).__name__}: {e})"],
                              description) from e

  def keys(self):
    return list(self._entries)

  def shape(self, key):
    return tuple(self._entries[key][1]["shape"])

  def get(self, key):
    path, info, data_start = self._entries[key]
    begin, end = info["data_offsets"]
    name = _SAFETENSORS_DTYPES[info["dtype"]]
    if name == "bfloat16":
      dtype = np.dtype(ml_dtypes.bfloat16)
    else:
      dtype = np.dtype(name)
    buf = np.empty(end - begin, np.uint8)
    with open(path, "rb") as fh:
      fh.seek(data_start + begin)
      if fh.readinto(memoryview(buf)) != end - begin:
        raise ConversionError([f"tensor {key!r}: short read (truncated file)"], self.description)
    return buf.view(dtype).reshape(info["shape"])

  def config(self):
    if self._config_path and os.path.exists(self._config_path):
      with open(self._config_path) as f:
        return json.load(f)
    return None


class TorchSource(TensorSource):
  """A ``torch.save`` state dict (``.pth``/``.pt``/``.ckpt``); torch is imported only here."""

  def __init__(self, path: str):
    super().__init__(path)
    cfg = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    self._config_path = cfg if os.path.exists(cfg) else None
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ConversionError([
          "reading a .pth/.ckpt needs torch: pip install 'postcam-jax[convert]'"], path) from e
    try:
      # mmap keeps the peak near one tensor for zipfile checkpoints.
      sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
      try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
      except Exception as e2:
        raise ConversionError([f"unreadable torch checkpoint ({type(e2).__name__}: {e2})"],
                              path) from e
    for wrapper in ("state_dict", "module", "model"):
      if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
        sd = sd[wrapper]
    if not isinstance(sd, Mapping):
      raise ConversionError([f"expected a state dict, found {type(sd).__name__}"], path)
    self._sd = sd
    self._torch = torch

  def keys(self):
    return [k for k, v in self._sd.items() if hasattr(v, "shape")]

  def config(self):
    if self._config_path:
      with open(self._config_path) as f:
        return json.load(f)
    return None

  def shape(self, key):
    return tuple(self._sd[key].shape)

  def get(self, key):
    t = self._sd[key]
    if t.dtype == self._torch.bfloat16:
      return t.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class DictSource(TensorSource):
  """An in-memory mapping (tests, and models converted from live objects)."""

  def __init__(self, arrays: Mapping[str, np.ndarray], description: str = "<dict>"):
    super().__init__(description)
    self._arrays = dict(arrays)

  def keys(self):
    return list(self._arrays)

  def shape(self, key):
    return tuple(np.shape(self._arrays[key]))

  def get(self, key):
    return np.asarray(self._arrays[key])


def open_source(path: str, weights_name: str = "diffusion_pytorch_model") -> TensorSource:
  """Open a directory (single or sharded safetensors + optional config.json), a file, or a .pth."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ConversionError([f"{path}: no such file or directory"], path)
  if os.path.isdir(path):
    cfg = os.path.join(path, "config.json")
    cfg = cfg if os.path.exists(cfg) else None
    index = [f for f in sorted(os.listdir(path)) if f.endswith(".safetensors.index.json")]
    if index:
      with open(os.path.join(path, index[0])) as f:
        try:
          weight_map = json.load(f)["weight_map"]
        except Exception as e:
          raise ConversionError([f"{index[0]}: not a safetensors index ({e})"], path) from e
      files = sorted(set(weight_map.values()))
      missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
      if missing:
        raise ConversionError([f"shard listed in {index[0]} is missing: {m}" for m in missing], path)
      return SafetensorsSource([os.path.join(path, f) for f in files], path, cfg)
    st = [f for f in sorted(os.listdir(path)) if f.endswith(".safetensors")]
    if st:
      preferred = [f for f in st if f.startswith(weights_name)] or st
      return SafetensorsSource([os.path.join(path, f) for f in preferred], path, cfg)
    pth = [f for f in sorted(os.listdir(path)) if f.endswith((".pth", ".pt", ".ckpt", ".bin"))]
    if len(pth) == 1:
      return TorchSource(os.path.join(path, pth[0]))
    raise ConversionError([f"{path}: no .safetensors (or single .pth/.ckpt) file found"], path)
  if path.endswith(".safetensors"):
    cfg = os.path.join(os.path.dirname(path), "config.json")
    return SafetensorsSource([path], path, cfg if os.path.exists(cfg) else None)
  if path.endswith((".pth", ".pt", ".ckpt", ".bin")):
    return TorchSource(path)
  raise ConversionError([f"{path}: unknown checkpoint type (expected a directory, .safetensors, "
                         ".pth, .pt or .ckpt)"], path)


# ----------------------------------------------------------------------------------------------
# Shared CLI pieces.


def numpy_dtype(name: str):
  """'float32' | 'bfloat16' -> numpy dtype (bf16 through ml_dtypes)."""
  if name == "bfloat16":
    return np.dtype(ml_dtypes.bfloat16)
  if name == "float32":
    return np.dtype(np.float32)
  raise ValueError(f"unknown dtype {name!r}; choose float32 or bfloat16")


def typed_config(cls, values: Mapping[str, Any], source: str):
  """``cls.from_dict(values)``, a config the checkpoint implies that ``cls`` refuses reported as a
  :class:`ConversionError`."""
  try:
    return cls.from_dict(values)
  except (TypeError, ValueError) as e:
    raise ConversionError([f"the architecture it implies is not a valid {cls.__name__}: {e}"],
                          source) from None


def add_conversion_arguments(parser, input_help: str, format_help: str | None = None):
  """The options every PyTorch -> postcam-jax subcommand shares."""
  parser.add_argument("--input", required=True, help=input_help)
  parser.add_argument("--output", required=True,
                      help="output directory (must not exist, or pass --overwrite)")
  parser.add_argument("--format", default="auto", choices=("auto", "wan", "diffusers"),
                      help=format_help or "key layout of the input (default: detect from the keys)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="parameter dtype of the output")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing output: only a model directory (one holding "
                           "model.json) that does not hold the input")


# ----------------------------------------------------------------------------------------------
# Table-driven mapping.


@dataclasses.dataclass(frozen=True)
class Rule:
  """``pattern`` (a full-match regex over the source key) -> ``target`` flat key template.

  ``target`` may use the pattern's groups (``{0}``, ``{1}``...). ``layer_group`` names the group
  that indexes a scanned (stacked) layer: the tensor goes to row ``int(group)`` of the stacked
  parameter. ``transform`` maps the torch array to the JAX layout (e.g. ``linear`` transposes).
  """
  pattern: str
  target: str
  transform: Callable[[np.ndarray], np.ndarray] = lambda a: a
  layer_group: int | None = None
  source: str | None = None  # readable source-key template ("blocks.{i}.x") for error messages

  def match(self, key):
    return re.fullmatch(self.pattern, key)


def linear(w):
  """torch Linear [out, in] -> Flax kernel [in, out]."""
  return np.ascontiguousarray(np.swapaxes(w, -1, -2))


def identity(w):
  return w


def conv_kernel(w):
  """torch Conv{1,2,3}d [O, I, *k] -> Flax kernel [*k, I, O]."""
  return np.ascontiguousarray(np.moveaxis(w, (0, 1), (-1, -2)))


def flat_key(path: Iterable[Any]) -> str:
  return "/".join(str(p) for p in path)


def convert_tensors(source: TensorSource, rules: list[Rule], abstract: Mapping[str, Any],
                    *, dtype=None, ignore: Iterable[str] = ()) -> dict[str, np.ndarray]:
  """Fill every leaf of ``abstract`` (flat key -> ShapeDtypeStruct) from ``source``.

  Reports every missing key, unexpected key and shape mismatch at once. Stacked (scanned)
  parameters are assembled in place: one pre-allocated array per parameter, so the peak stays
  near the size of the output.
  """
  problems: list[str] = []
  out: dict[str, np.ndarray] = {}
  filled: dict[str, set] = {}
  ignore_res = [re.compile(p) for p in ignore]
  for key in source.keys():
    if any(r.fullmatch(key) for r in ignore_res):
      continue
    rule, m = next(((r, m) for r in rules if (m := r.match(key))), (None, None))
    if rule is None:
      problems.append(f"unexpected key {key!r} {source.shape(key)}")
      continue
    target = rule.target.format(*m.groups())
    if target not in abstract:
      problems.append(f"unexpected key {key!r}: maps to {target!r}, which this model does not have")
      continue
    want = abstract[target]
    want_dtype = dtype or want.dtype
    layer = None if rule.layer_group is None else int(m.group(rule.layer_group))
    raw_shape = source.shape(key)
    expect = want.shape if layer is None else want.shape[1:]
    arr_shape = rule.transform(np.empty(raw_shape, np.int8)).shape if raw_shape else ()
    if tuple(arr_shape) != tuple(expect):
      problems.append(f"wrong shape for {key!r}: expected {tuple(_torch_shape(rule, expect))}, "
                      f"got {tuple(raw_shape)}")
      filled.setdefault(target, set()).add(layer)  # present, so not also "missing"
      continue
    if layer is not None and not 0 <= layer < want.shape[0]:
      problems.append(f"unexpected key {key!r}: layer {layer} out of range (model has "
                      f"{want.shape[0]})")
      continue
    if problems:  # once something is wrong, only keep checking (no more reading)
      filled.setdefault(target, set()).add(layer)
      continue
    raw = source.get(key)
    bad = first_non_finite_index(raw)
    if bad is not None:  # a damaged checkpoint would convert and sample black videos
      problems.append(f"non-finite value (NaN or Inf) in {key!r} at index {bad}: the checkpoint "
                      f"is damaged; download or export it again")
      filled.setdefault(target, set()).add(layer)
      continue
    arr = rule.transform(raw).astype(want_dtype)
    if layer is None:
      out[target] = arr
    else:
      if target not in out:
        out[target] = np.zeros(want.shape, want_dtype)
      out[target][layer] = arr
    filled.setdefault(target, set()).add(layer)
  source_of = {r.target: r for r in rules}
  for target, want in abstract.items():
    got = filled.get(target, set())
    rule = source_of.get(target)
    name = rule.source if rule is not None and rule.source else target
    if rule is not None and rule.layer_group is not None:
      missing_layers = sorted(set(range(want.shape[0])) - got)
      problems += [f"missing key {name.replace('{i}', str(i))!r}" for i in missing_layers]
    elif not got:
      problems.append(f"missing key {name!r} (for {target} {tuple(want.shape)})")
  if problems:
    raise ConversionError(problems, source.description)
  return out


def first_non_finite_index(arr: np.ndarray) -> tuple[int, ...] | None:
  """The index of the first NaN/Inf of a floating array (bfloat16 included), or None."""
  if arr.dtype.kind != "f" and arr.dtype != np.dtype(ml_dtypes.bfloat16):
    return None
  finite = np.isfinite(arr)
  if finite.all():
    return None
  return tuple(int(i) for i in np.unravel_index(int(np.argmin(finite)), arr.shape))


def _torch_shape(rule: Rule, jax_shape):
  """Best-effort torch-side shape for error messages (inverse of the rule's transform)."""
  if rule.transform is linear and len(jax_shape) >= 2:
    return tuple(jax_shape[:-2]) + (jax_shape[-1], jax_shape[-2])
  if rule.transform is conv_kernel and len(jax_shape) >= 2:
    return (jax_shape[-1], jax_shape[-2]) + tuple(jax_shape[:-2])
  return tuple(jax_shape)
