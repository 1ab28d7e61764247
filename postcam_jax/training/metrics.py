"""What a training run reports: scalars, progress, the parameter overview and an MFU estimate.

Only process 0 writes. Scalars go to three sinks behind one :class:`MetricWriter`: TensorBoard event
files through ``tensorboard.summary.Writer`` (TensorFlow-free), absl logging (the console), and
``metrics.jsonl`` in the work directory (one JSON object per write, for tools and tests). The
progress bar is tqdm with steps/s and the ETA.

``metrics.jsonl`` survives crashes: each record is one ``write`` of a whole line to a file opened
for appending (``core.atomic.append_line``: never half a line from a kill between two buffered
writes). A line cut anyway (the machine lost power mid-write) is ended by the resumed run's first
record, which starts on a line of its own, and :func:`read_jsonl` skips any unreadable line and
reports it.
"""

import json
import os
import time

import jax
import numpy as np
from absl import logging
from flax import nnx
from tensorboard.summary import Writer
from tqdm import tqdm

from postcam_jax.core import atomic


class MetricWriter:
  """Scalars to TensorBoard + console + ``metrics.jsonl`` on process 0; a no-op elsewhere."""

  def __init__(self, workdir: str, *, active: bool | None = None):
    self.active = jax.process_index() == 0 if active is None else active
    self._tb = None
    self._jsonl = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self._tb = Writer(os.path.join(workdir, "tensorboard"))
      self._jsonl = os.path.join(workdir, "metrics.jsonl")

  def write_scalars(self, step: int, scalars: dict, *, console: bool = True):
    if not self.active:
      return
    clean = {k: float(v) for k, v in scalars.items() if v is not None}
    for name, value in clean.items():
      self._tb.add_scalar(name, value, step)
    if atomic.append_line(self._jsonl, json.dumps({"step": int(step), **clean})):
      logging.warning("%s: its last line (a record cut by a crash) was incomplete; it is kept, "
                      "ended, and skipped when read", self._jsonl)
    if console:
      logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in sorted(clean.items())))

  def flush(self):
    if self.active:
      self._tb.flush()

  def close(self):
    if self.active:
      self._tb.close()
      self.active = False


def read_jsonl(workdir: str) -> list[dict]:
  """Every record of a run's ``metrics.jsonl`` (in write order); a line that is not a JSON
  object (one cut by a crash) is skipped and reported."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        record = None
      if not isinstance(record, dict):
        logging.warning("%s: line %d is not a whole record (cut by a crash?); skipped: %.80r",
                        path, number, line)
        continue
      records.append(record)
  return records


class Progress:
  """tqdm bar on process 0 with steps/s and ETA; also measures steps/s between reports."""

  def __init__(self, total: int, initial: int, *, active: bool | None = None):
    self.active = jax.process_index() == 0 if active is None else active
    self._bar = None
    if self.active:
      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                       mininterval=1.0)
    self._last_time = time.perf_counter()
    self._last_step = initial

  def update(self, step: int, postfix: dict | None = None):
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      if postfix:
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

  def rate(self, step: int) -> float | None:
    """Steps per second since the previous call (None on the first)."""
    now = time.perf_counter()
    done = step - self._last_step
    elapsed = now - self._last_time
    self._last_time, self._last_step = now, step
    return done / elapsed if done > 0 and elapsed > 0 else None

  def close(self):
    if self._bar is not None:
      self._bar.close()


def parameter_overview(model, trainable_filter) -> str:
  """A table of parameter groups (top two path levels): shape of the first leaf, count,
  trainable or frozen; then the totals."""
  rows: dict[str, list] = {}
  train_state = nnx.to_flat_state(nnx.state(model, trainable_filter))
  trainable_paths = {path for path, _ in train_state}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    group = "/".join(str(p) for p in path[:3])
    size = int(np.prod(var.shape))
    row = rows.setdefault(group, [0, path in trainable_paths, var.dtype])
    row[0] += size
  width = max(len(g) for g in rows) + 2
  lines = [f"{'group':<{width}}{'params':>14}  {'dtype':<9}status"]
  for group, (size, is_trainable, dtype) in rows.items():
    lines.append(f"{group:<{width}}{size:>14,}  {str(dtype):<9}"
                 f"{'trainable' if is_trainable else 'frozen'}")
  total = sum(r[0] for r in rows.values())
  trainable = sum(r[0] for r in rows.values() if r[1])
  lines.append(f"total {total:,}; trainable {trainable:,} ({100 * trainable / max(total, 1):.2f} "
               f"%); frozen {total - trainable:,}")
  return "\n".join(lines)


def mfu(flops_per_step: float, steps_per_second: float | None, peak_per_device: float | None,
        num_devices: int) -> float | None:
  """Model-FLOP utilisation: achieved model FLOP/s over the devices' peak (None if unknown)."""
  if not steps_per_second or not peak_per_device:
    return None
  return flops_per_step * steps_per_second / (peak_per_device * num_devices)
