"""Fused attention on CPU: ``cpu_flash.cc`` as an XLA FFI custom call, with a recomputing backward.

On CPU, XLA runs every step of the blocked kernel's online softmax (row max, exponentials, sums,
rescaling) as its own pass over a tile in memory between two library dots; PyTorch's fused CPU
kernel does them on a cache-resident tile, and that difference was the last 6-8 % between the
jitted forward and the release's (docs/performance.md, issue 24). ``cpu_flash.cc`` does the same
in one kernel: per head and block of 64 queries, a tile of 256 keys' scores, its softmax against
the running max, and its product with V, never leaving L1/L2. The forward returns the output and
the log-sum-exp; the backward is the blocked kernel's (``blocked.backward_with_lse``), which
recomputes the probabilities tile by tile from them.

The kernel is built on first use with the system's C++ compiler (``$CXX`` or ``c++``, ``-O3
-march=native -fopenmp``) into ``$POSTCAM_JAX_CACHE`` (default ``~/.cache/postcam_jax``), keyed
by its source, the flags, jaxlib's version and this CPU, then registered with JAX. Where no
compiler works, :func:`available` is False, a warning says why once, and ``auto`` keeps the
blocked kernel: results are the same to float32 rounding either way.

It computes float32 attention without a bias (any scale) and an even head_dim; ``auto`` picks it
on CPU for those calls of at least ``local.FLASH_MIN_QUERIES`` queries outside a multi-device
mesh (an FFI call is opaque to XLA's partitioner, which would gather its operands; under a mesh
the blocked kernel stays).
"""

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import warnings

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from postcam_jax.models.attention import blocked

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_flash.cc")
TARGET = "postcam_cpu_flash_forward"
SYMBOL = "PostcamCpuFlashForward"
CXX_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-w")
HEAD_DIM_MULTIPLE = 2  # the kernel's smallest block of output rows


def cache_dir() -> str:
  root = os.environ.get("POSTCAM_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "postcam_jax")
  return os.path.join(root, "cpu_flash")


def _cpu_signature() -> str:
  """What -march=native compiled for: the CPU's model and feature flags."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = [x for x in f if x.startswith(("model name", "flags"))][:2]
  except OSError:
    lines = []
  return platform.machine() + platform.processor() + "".join(lines)


def _compiler() -> str:
  return os.environ.get("CXX") or "c++"


def library_name() -> str:
  with open(SOURCE, "rb") as f:
    source = f.read()
  key = hashlib.sha256(b"\0".join([
      source, " ".join((_compiler(),) + CXX_FLAGS).encode(), jaxlib.__version__.encode(),
      _cpu_signature().encode()])).hexdigest()[:16]
  return f"libpostcam_cpu_flash_{key}.so"


def build() -> str:
  """Path of the compiled kernel, compiled now unless the cache has it (written under a temporary
  name, then renamed: a concurrent or killed build never leaves half a library). Raises
  RuntimeError with the compiler's message when it cannot be built."""
  path = os.path.join(cache_dir(), library_name())
  if os.path.exists(path):
    return path
  os.makedirs(cache_dir(), exist_ok=True)
  partial = f"{path}.{os.getpid()}.partial"
  cmd = [_compiler(), *CXX_FLAGS, "-I", jax.ffi.include_dir(), SOURCE, "-o", partial]
  try:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    os.replace(partial, path)
  except FileNotFoundError as e:
    raise RuntimeError(f"no C++ compiler {cmd[0]!r} (set $CXX)") from e
  except subprocess.CalledProcessError as e:
    raise RuntimeError(f"{cmd[0]} failed: {e.stderr.strip()[-500:]}") from e
  except subprocess.TimeoutExpired as e:
    raise RuntimeError(f"{cmd[0]} took over 600 s") from e
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return path


@functools.cache
def available() -> bool:
  """Whether the kernel is built and registered with JAX (built on the first call)."""
  try:
    library = ctypes.cdll.LoadLibrary(build())
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(library, SYMBOL)),
                                platform="cpu")
  except (RuntimeError, OSError, AttributeError) as e:
    warnings.warn(f"the fused CPU attention is not available ({e}); attention on CPU uses the "
                  f"blocked kernel", stacklevel=2)
    return False
  return True


def supports(q, k, v, bias=None) -> bool:
  """Whether the kernel computes this call: float32, no bias, head_dim even."""
  return (bias is None and all(x.dtype == jnp.float32 for x in (q, k, v))
          and q.shape[-1] % HEAD_DIM_MULTIPLE == 0 and k.shape[1] > 0)


def forward_with_lse(q, k, v, scale: float):
  """(output [B, Lq, H, D] float32, log-sum-exp [B, H, Lq] float32) of softmax(scale q k^T) v."""
  if not available():
    raise RuntimeError("the fused CPU attention could not be built (see the warning above); use "
                       "implementation='blocked'")
  b, lq, h, d = q.shape
  heads_first = lambda x: jnp.transpose(x, (0, 2, 1, 3))  # noqa: E731  k, v: [B, H, L, D]
  out, lse = jax.ffi.ffi_call(
      TARGET, (jax.ShapeDtypeStruct((b, lq, h, d), jnp.float32),
               jax.ShapeDtypeStruct((b, h, lq), jnp.float32)),
      vmap_method="sequential")(q, heads_first(k), heads_first(v), scale=np.float32(scale))
  return out, lse


def _impl(q, k, v, scale):
  return forward_with_lse(q, k, v, scale)[0]


def _fwd(q, k, v, scale):
  out, lse = forward_with_lse(q, k, v, scale)
  return out, (q, k, v, out, lse)


def _bwd(scale, residuals, g):
  q, k, v, out, lse = residuals
  delta = jnp.einsum("blhd,blhd->bhl", g, out)
  dq, dk, dv, _ = blocked.backward_with_lse(q, k, v, g, lse, delta, scale=scale,
                                            precision=jax.lax.Precision.HIGHEST)
  return dq, dk, dv


_flash = jax.custom_vjp(_impl, nondiff_argnums=(3,))
_flash.defvjp(_fwd, _bwd)


def cpu_flash_attention(q, k, v, *, scale=None):
  """softmax(scale q k^T) v, q [B, Lq, H, D], k/v [B, Lk, H, D] float32 -> [B, Lq, H, D]."""
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"cpu_flash attention takes q [B, Lq, H, D] and k, v [B, Lk, H, D] of one "
                     f"batch, heads and head_dim; got q {q.shape}, k {k.shape}, v {v.shape}")
  if not supports(q, k, v):
    raise ValueError(f"cpu_flash attention computes float32 with an even head_dim and at least "
                     f"one key (got {q.dtype}, head_dim {q.shape[-1]}, {k.shape[1]} keys); use "
                     f"implementation='blocked'")
  scale = 1.0 / float(q.shape[-1]) ** 0.5 if scale is None else float(scale)
  return _flash(q, k, v, scale)
