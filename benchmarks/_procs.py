"""Side-by-side runs in child processes, shared by the benchmarks (no jax or torch import here).

Each side of a comparison runs in its own process pinned to the same CPUs, so the thread counts
match and each side's peak memory is its own: the parent starts ``python script --child ...``
(:func:`run_child`), the child :func:`pin`-s itself before importing jax or torch and reports one
JSON line (:func:`emit`).
"""

import json
import os
import subprocess
import sys

RESULT = "RESULT "


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
