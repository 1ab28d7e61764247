"""Small timing helpers shared by the benchmarks (wall clock, warm-up excluded)."""

import platform
import resource
import statistics
import time

import jax
import numpy as np


def machine() -> str:
  dev = jax.devices()[0]
  return (f"{platform.processor() or platform.machine()}, {jax.device_count()} x "
          f"{dev.platform} ({getattr(dev, 'device_kind', '')}), jax {jax.__version__}")


def time_fn(fn, *, repeats=3, warmup=1):
  """Median seconds of ``fn()`` (which must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def block(x):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())

