"""A sweep over meshes, remat policies and gradient accumulation, pruned and resumable."""

import dataclasses
import json
import os
import sys

from postcam_jax import training
from postcam_jax.core import atomic
from postcam_jax.models import flops
from postcam_jax.parallel import mesh_spec_str
from postcam_jax.planning import planner
from postcam_jax.planning.steps import Request
from postcam_jax.planning.topology import GIB, topology_devices

# Most memory-saving first: the sweep prunes on the order (see ``sweep``).
SWEEP_REMATS = ("full", "dots_no_batch", "none")


def candidate_meshes(n: int, req: Request, batch: int) -> list[dict]:
  """Meshes of n chips: a sequence axis over the divisors of n that split the main stream, the
  rest of the chips all on fsdp or all on data; without a sequence axis also tensor = 2 or 4
  (where it divides the heads and the FFN width) with fsdp on the rest. The batch axes must
  divide the global batch."""
  cfg = training.model_config(req.config)
  tokens, _ = flops.token_counts(cfg, req.latent)
  out = []

  def add(sizes):
    if batch % (sizes["data"] * sizes["fsdp"]) == 0 and sizes not in out:
      out.append(sizes)

  for seq in (s for s in range(1, n + 1) if n % s == 0 and (2 * tokens) % s == 0):
    rest = n // seq
    add({"data": 1, "fsdp": rest, "tensor": 1, "sequence": seq})
    add({"data": rest, "fsdp": 1, "tensor": 1, "sequence": seq})
  for t in (2, 4):
    if n % t == 0 and cfg.num_heads % t == 0 and cfg.ffn_dim % t == 0:
      add({"data": 1, "fsdp": n // t, "tensor": t, "sequence": 1})
  return out


def with_options(config, remat: str, accum: int):
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.model = {**dict(config.model), "remat": remat}
    out.optim.accum_steps = accum
  return out


def _request_key(req: Request) -> str:
  """Everything a candidate's plan depends on, as a string (journal entries must match it)."""
  config = req.config.to_dict() if hasattr(req.config, "to_dict") else dict(req.config)
  fields = {f.name: getattr(req, f.name) for f in dataclasses.fields(req) if f.name != "config"}
  return json.dumps([config, fields], sort_keys=True, default=str)


class Journal:
  """Finished sweep candidates, one JSON line each, keyed by their full request. A sweep of a
  1.3B step is hours of compiles on a small host; rerun with the same ``--out``, it reuses every
  candidate already planned and compiles only the rest."""

  def __init__(self, path: str | None):
    self.path, self.done = path, {}
    if path and os.path.exists(path):
      with open(path, errors="replace") as f:
        for number, line in enumerate(f, start=1):
          if not line.strip():
            continue
          try:
            entry = json.loads(line)
            self.done[entry["key"]] = entry["report"]
          except (ValueError, KeyError, TypeError):  # a line cut by a crash: plan it again
            print(f"note: {path}: line {number} is not a whole entry (cut by a crash?); its "
                  f"candidate is planned again", file=sys.stderr)

  def get(self, req: Request):
    return self.done.get(_request_key(req))

  def add(self, req: Request, report: dict):
    key = _request_key(req)
    self.done[key] = report
    if self.path:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      atomic.append_line(self.path, json.dumps({"key": key, "report": report}, default=str))


def sweep(req: Request, remats=SWEEP_REMATS, accums=(1, 2, 4), meshes=None, log=print,
          plan_fn=None, journal: Journal | None = None) -> list:
  """Every (mesh, remat) that fits at its smallest gradient accumulation, priced; sorted by
  estimated step time.

  Compiles are the cost (about a minute each at 1.3B on a 2-core host), so the sweep prunes on
  two monotonic facts: more accumulation only lowers memory and only slows the step, so for a
  (mesh, remat) only the smallest fitting accumulation is priced; and a remat policy that saves
  less (``remats`` runs from the most saving) needs at least the accumulation of the one before,
  and cannot fit where that one did not, so the remaining policies of that mesh are skipped.
  ``journal`` keeps every planned candidate, so an interrupted sweep resumes where it stopped.
  """
  plan_fn = plan_fn or planner.plan
  journal = journal or Journal(None)
  n = len(topology_devices(req.topology))
  batch = int(req.config.data.batch_size)
  rows = []
  for sizes in meshes or candidate_meshes(n, req, batch):
    min_accum = 1
    for remat in remats:
      fitted = False
      for accum in accums:
        if accum < min_accum or batch % accum or (batch // accum) % (sizes["data"] *
                                                                      sizes["fsdp"]):
          continue
        cand = req.replace(config=with_options(req.config, remat, accum), mesh=sizes)
        r = journal.get(cand)
        reused = r is not None
        if not reused:
          try:
            r = plan_fn(cand)
          except Exception as e:  # a candidate the partitioner or kernels reject: skip, say why
            log(f"  {mesh_spec_str(sizes)} remat={remat} accum={accum}: failed: "
                f"{str(e).splitlines()[0][:200]}")
            break
          journal.add(cand, r)
        log(f"  {mesh_spec_str(sizes)} remat={remat} accum={accum}"
            + (" (from the journal)" if reused else "") + ": "
            + (f"{r['need_bytes'] / GIB:.1f} GiB, {r['step_seconds']:.3f} s, "
               f"MFU {100 * r['mfu']:.1f} %" if r["fits"] else
               f"does not fit ({r['need_bytes'] / GIB:.1f} GiB)"))
        if r["fits"]:
          rows.append(r)
          min_accum, fitted = accum, True
          break
      if not fitted:
        log(f"  {mesh_spec_str(sizes)}: remat={remat} fits at no accumulation in {accums}; "
            f"policies saving less are skipped")
        break
  return sorted(rows, key=lambda r: r["step_seconds"])


def format_sweep(rows: list, config_path: str) -> str:
  if not rows:
    return "no candidate fits"
  lines = [f"{'':2s}{'mesh':38s} {'remat':14s} {'accum':>5s} {'GiB/chip':>9s} {'step s':>8s} "
           f"{'MFU %':>6s} {'tokens/s':>10s}"]
  for i, r in enumerate(rows):
    lines.append(f"{'*' if i == 0 else ' '} {r['mesh']:38s} {r['remat']:14s} "
                 f"{r['accum_steps']:>5d} {r['need_bytes'] / GIB:9.2f} {r['step_seconds']:8.3f} "
                 f"{100 * r['mfu']:6.1f} {r['tokens_per_second']:10.0f}")
  lines.append("* best. Train it with:\n  " + train_command(rows[0], config_path))
  return "\n".join(lines)


def train_command(r: dict, config_path: str) -> str:
  return (f"python -m postcam_jax.train --config {config_path} --workdir WORKDIR "
          f"--config.mesh={r['mesh']} --config.model.remat={r['remat']} "
          f"--config.optim.accum_steps={r['accum_steps']}")
