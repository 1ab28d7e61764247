"""A trained PostCam and its stand-in codec in one checksummed file (the demo's shipped checkpoint).

``save_bundle(path, model, codec, info)`` writes ``path`` (safetensors: every parameter under
``model/``, the PCA codec under ``codec/``, the model's config in the header) and beside it
``path`` with ``.json`` for ``.safetensors``: the file's SHA-256 and ``info`` (how it was made:
command, seed, time, machine, scores). ``load_bundle(path)`` checks the file against that
SHA-256 before reading a byte of it as weights, then rebuilds the model and the codec.

One file rather than a model directory because it is committed to the repository: one checksum
covers all of it, and it holds float32 weights exactly (a few MB at the demo's size).
"""

import hashlib
import json
import os

import numpy as np
from flax import nnx, traverse_util
from safetensors import numpy as safetensors_np

from postcam_jax.core import atomic
from postcam_jax.data import codec as codec_lib
from postcam_jax.io import model_dir
from postcam_jax.models.postcam import PostCamConfig, PostCamModel


class BundleError(RuntimeError):
  """A shipped checkpoint that is missing, altered or unreadable; the message names the fix."""


def sidecar(path: str) -> str:
  """The JSON beside ``path`` that holds its SHA-256 and how it was made."""
  return os.path.splitext(path)[0] + ".json"


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _param_paths(model: nnx.Module) -> dict[str, tuple]:
  """Flat key ('a/b/0/c') -> the path in the model's pure parameter dict (list indices stay
  ints there, so keys are mapped back through the model's own tree, not parsed)."""
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {"/".join(str(k) for k in path): path for path in traverse_util.flatten_dict(pure)}


def save_bundle(path: str, model: PostCamModel, codec: codec_lib.PCACodec, info: dict) -> str:
  """Write the bundle and its sidecar (each atomically: never half a file); returns the SHA-256."""
  tensors = {f"model/{k}": np.ascontiguousarray(v, np.float32)
             for k, v in model_dir.to_numpy_flat(model).items()}
  tensors.update({f"codec/{k}": np.ascontiguousarray(v) for k, v in codec.state().items()})
  header = {"postcam_config": json.dumps(model.cfg.to_dict(), sort_keys=True)}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with atomic.atomic_file(path, ".safetensors") as tmp:
    safetensors_np.save_file(tensors, tmp, metadata=header)
  digest = sha256_of(path)
  with atomic.atomic_file(sidecar(path), ".json") as tmp:
    with open(tmp, "w") as f:
      json.dump({"sha256": digest, **info}, f, indent=1, sort_keys=True)
      f.write("\n")
  return digest


def read_info(path: str) -> dict:
  try:
    with open(sidecar(path)) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise BundleError(f"{sidecar(path)}: unreadable ({type(e).__name__}); restore it from the "
                      f"repository or remake the checkpoint with python -m postcam_jax.demo "
                      f"--train") from e


def _check_digest(path: str, actual: str, info: dict) -> dict:
  if actual != info.get("sha256"):
    raise BundleError(f"{path}: SHA-256 {actual[:12]}... is not the recorded "
                      f"{str(info.get('sha256'))[:12]}... (the file was altered or truncated); "
                      f"restore it from the repository or remake it with python -m "
                      f"postcam_jax.demo --train")
  return info


def _missing(path: str) -> BundleError:
  return BundleError(f"{path}: missing; restore it from the repository (git checkout) or remake "
                     f"it with python -m postcam_jax.demo --train")


def verify(path: str) -> dict:
  """The sidecar's info once ``path`` matches its SHA-256; BundleError otherwise."""
  info = read_info(path)
  if not os.path.isfile(path):
    raise _missing(path)
  return _check_digest(path, sha256_of(path), info)


def load_bundle(path: str) -> tuple[PostCamModel, codec_lib.PCACodec, dict]:
  """(model in float32, codec, info) of a bundle whose checksum matches its sidecar."""
  info = read_info(path)
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise _missing(path) from None
  _check_digest(path, hashlib.sha256(raw).hexdigest(), info)  # the bytes read are the bytes hashed
  # safetensors' header: 8-byte little-endian length, then JSON with the metadata
  header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")]).get("__metadata__", {})
  tensors = safetensors_np.load(raw)
  cfg = PostCamConfig.from_dict({**json.loads(header["postcam_config"]), "precision": "float32"})
  model = PostCamModel(cfg, rngs=nnx.Rngs(0))
  paths = _param_paths(model)
  stored = {k[len("model/"):] for k in tensors if k.startswith("model/")}
  if stored != set(paths):
    raise BundleError(f"{path}: its parameters do not match its own config (missing "
                      f"{sorted(set(paths) - stored)[:3]}, unexpected "
                      f"{sorted(stored - set(paths))[:3]}); remake it with python -m "
                      f"postcam_jax.demo --train")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  nnx.replace_by_pure_dict(params, traverse_util.unflatten_dict(
      {paths[k]: tensors[f"model/{k}"] for k in paths}))
  codec = codec_lib.PCACodec.from_state(
      {k: tensors[f"codec/{k}"] for k in ("mean", "components", "scales")})
  return nnx.merge(graphdef, params, rest), codec, info
