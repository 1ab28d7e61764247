"""Side-by-side runs in child processes, shared by the benchmarks (no jax or torch import here).

Each side of a comparison runs in its own process pinned to the same CPUs, so the thread counts
match and each side's peak memory is its own: the parent starts ``python script --child ...``
(:func:`run_child`), the child :func:`pin`-s itself before importing jax or torch and reports one
JSON line (:func:`emit`).
"""

import argparse
import json
import os
import subprocess
import sys

RESULT = "RESULT "


def side_arguments(description: str, latent_default: str, latent_help: str):
  """The argument parser both sides of a JAX/PyTorch comparison share: the model, its size and
  the thread count (each side adds its own flags)."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--model", choices=("postcam", "dit"), required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--threads", type=int, default=0)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--ffn", type=int, default=1536)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--text-dim", type=int, default=512)
  p.add_argument("--latent", default=latent_default, help=latent_help)
  p.add_argument("--seed", type=int, default=0)
  return p


def pin(threads: int) -> int:
  """Restrict this process to its first ``threads`` allowed CPUs (0: all); returns the count.
  Call before importing jax or torch (their thread pools size themselves from the affinity)."""
  cpus = sorted(os.sched_getaffinity(0))
  if threads:
    cpus = cpus[:threads]
    os.sched_setaffinity(0, cpus)
  return len(cpus)


def _status(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise KeyError(field)


def rss_bytes() -> int:
  return _status("VmRSS")


def reset_peak_rss():
  """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def peak_rss_bytes() -> int:
  return _status("VmHWM")


def emit(result: dict):
  print(RESULT + json.dumps(result), flush=True)


def run_child(argv: list, timeout: float | None = None) -> dict:
  """Run ``python argv...`` and return the dict it :func:`emit`-ted (raises with its output)."""
  proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout)
  for line in proc.stdout.splitlines():
    if line.startswith(RESULT):
      return json.loads(line[len(RESULT):])
  raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode} without a result:\n"
                     f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
