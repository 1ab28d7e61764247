"""Pricing a compiled step: the TPU cost model, with its blind spots filled in.

Two blind spots of XLA's cost model are handled and labelled in every report:
- a ``while`` body (the ``lax.scan`` over blocks) is counted once, so costs are measured on 0- and
  1-layer compiles of the same step and extrapolated linearly to L layers (c0 + L (c1 - c0));
- Pallas kernels without a ``cost_estimate`` (splash attention) are priced at zero, so their
  analytic FLOPs (from the custom calls' operand shapes in the compiled HLO) are added, at peak.
A third, found on v6e: each ``ConcatBitcast`` custom call (a concatenation of VMEM-prefetched
weight slices that is only a bitcast) is priced at exactly -1 s, a "no estimate" sentinel, so a
1.3B step came out at -21,000 s; so is each of the three custom calls of a matrix inverse (v5p and
v6e). The planner counts them in the compiled HLO and takes the -1 s back out (priced at zero,
see SENTINEL_TARGETS); a step whose time is still negative is an error, never a report.
"""

import dataclasses
import json
import math
import re

from postcam_jax.models.attention import splash
from postcam_jax.planning.steps import Request, lower_step, with_layers
from postcam_jax.planning.topology import GIB

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")


_WHILE = re.compile(r"while\(.*body=%?([\w.\-]+)")


_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


_CALLED = re.compile(r"(?:calls|to_apply|body|condition|true_computation|false_computation)="
                     r"%?([\w.\-]+)|branch_computations=\{([^}]*)\}")


_SHAPE = re.compile(r"\b(bf16|f16|f32|f64|s8|s32|u8|u32|pred|s16)\[([\d,]*)\]")


def hlo_kernel_flops(hlo: str) -> tuple[float, dict]:
  """Analytic FLOPs of the splash kernels in compiled HLO text; also {kernel name: launches} of
  every Mosaic custom call. A kernel inside a while body is weighted by the loop's
  ``known_trip_count`` where the compiler kept one, else counted once (as the cost model does):
  the estimate uses 0/1-layer compiles, which have no layer loop."""
  bodies: dict[str, list[str]] = {}
  current = None
  for line in hlo.splitlines():
    head = _COMPUTATION.match(line) if line and not line.startswith(" ") else None
    if head:
      current = head.group(1)
      bodies[current] = []
    elif current is not None:
      bodies[current].append(line)
  entry = next((m.group(1) for m in (_COMPUTATION.match(x) for x in hlo.splitlines()
                                     if x.startswith("ENTRY")) if m), None)
  weight = {entry: 1} if entry else {}
  order = [entry] if entry else []
  for name in order:  # breadth-first: a computation's callers come first in this order
    for line in bodies.get(name, []):
      trip = 1
      if _WHILE.search(line):
        t = _TRIP.search(line)
        trip = int(t.group(1)) if t else 1
      for single, many in _CALLED.findall(line):
        for callee in ([single] if single else re.findall(r"%?([\w.\-]+)", many)):
          w = weight[name] * (trip if f"body={callee}" in line.replace("%", "") else 1)
          if callee not in weight:
            order.append(callee)
          weight[callee] = max(weight.get(callee, 0), w)
  text = hlo.replace("%", "")
  fused = "splash_mha_dq" not in text
  total, launches = 0.0, {}
  for name, lines in bodies.items():
    for line in lines:
      if 'custom_call_target="tpu_custom_call"' not in line:
        continue
      inst = line.strip().split(" = ", 1)[0].lstrip("%")
      kernel = inst.rsplit(".", 1)[0]
      launches[kernel] = launches.get(kernel, 0) + weight.get(name, 1)
      kind = ("fwd" if "_fwd" in kernel else "dq" if "_dq" in kernel
              else ("bwd_fused" if fused else "dkv") if "_dkv" in kernel else None)
      if kind is None or not kernel.startswith("splash"):
        continue
      constraints = line.split("operand_layout_constraints={", 1)[1]
      dims = [tuple(int(d) for d in s.split(",") if d) for t, s in _SHAPE.findall(constraints)
              if t in ("bf16", "f16", "f32")]
      q, k = [d for d in dims if len(d) >= 3][:2]
      total += weight.get(name, 1) * splash.kernel_flops(kind, math.prod(q[:-2]), q[-2], k[-2],
                                                          q[-1])
  return total, launches


# Custom calls the TPU cost model prices at -1 s each (its "no estimate" sentinel): ConcatBitcast
# on v6e, a concatenation that is only a bitcast of its operands; and, on v5p and v6e alike, the
# three calls of a matrix inverse (``jnp.linalg.inv`` of a [1, 4, 4] compiles to -3 s: LU, then
# the two triangular inverses), which the renderer's 4x4 camera inverses make. They are priced at
# zero once taken out: exact for the bitcast, and the inverses here are of 4x4 and 3x3 matrices.
SENTINEL_TARGETS = ("ConcatBitcast", "LuDecompositionBlock", "InvertDiagBlocksLowerTriangular",
                    "InvertDiagBlocksUpperTriangular")


_SENTINEL = re.compile(r'custom_call_target="(' + "|".join(SENTINEL_TARGETS) + r')"')


def cost_of(compiled) -> dict:
  """The cost model's numbers for one compiled step, plus the splash FLOPs it leaves out, with
  the -1 s sentinels of ``SENTINEL_TARGETS`` taken back out (each counted once per instruction,
  as the cost model counts them)."""
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  hlo = compiled.as_text()
  kernel_flops, launches = hlo_kernel_flops(hlo)
  sentinels = len(_SENTINEL.findall(hlo))
  reported = float(cost.get("optimal_seconds", 0.0))
  seconds = reported + 1.0 * sentinels
  if seconds < 0:
    raise ValueError(f"the TPU cost model returned a negative time ({reported:.4g} s, "
                     f"{seconds:.4g} s after {sentinels} sentinel custom calls); an op it cannot "
                     f"price is not in aot.SENTINEL_TARGETS")
  return {"flops": float(cost.get("flops", 0.0)), "optimal_seconds": seconds,
          "reported_optimal_seconds": reported, "sentinel_custom_calls": sentinels,
          "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
          "kernel_flops": kernel_flops, "kernel_launches": launches}


_ZERO_LAYER_COSTS: dict[str, dict] = {}


def _zero_layer_key(req: Request) -> str:
  """What a 0-block step depends on: everything but the remat policy (no block to remat)."""
  config = with_layers(req.config, 0).to_dict()
  config["model"].pop("remat", None)
  fields = {f.name: getattr(req, f.name) for f in dataclasses.fields(req) if f.name != "config"}
  return json.dumps([config, fields], sort_keys=True, default=str)


def one_micro_step(req: Request) -> Request:
  """The training request priced per micro-batch: a step with gradient accumulation runs its
  micro-batches in a ``lax.scan``, whose body the cost model would count once (blind spot 1), so
  its price is that of the same step on one micro-batch without accumulation, times the
  accumulation (the planner's ``repeats``; the optimizer update is then counted once per
  micro-batch, a few milliseconds of AdamW over the sharded trainable set). Other requests are
  returned as they are."""
  accum = int(req.config.optim.accum_steps) if req.step == "train" else 1
  if accum == 1:
    return req
  config = req.config.copy_and_resolve_references()
  with config.unlocked():
    config.optim.accum_steps = 1
    config.data.batch_size = int(config.data.batch_size) // accum
  return req.replace(config=config)


def layer_extrapolated_cost(req: Request, num_layers: int) -> dict:
  """c0 + L (c1 - c0) from compiles of the same step with 0 and 1 blocks (blind spot 1), on one
  micro-batch (:func:`one_micro_step`). The 0-block cost is shared by the remat policies of a
  sweep."""
  req = one_micro_step(req)
  c = []
  for k in (0, 1):
    key = _zero_layer_key(req) if k == 0 else None
    if key is not None and key in _ZERO_LAYER_COSTS:
      c.append(_ZERO_LAYER_COSTS[key])
      continue
    lowered, _ = lower_step(req.replace(config=with_layers(req.config, k)))
    c.append(cost_of(lowered.compile()))
    if key is not None:
      _ZERO_LAYER_COSTS[key] = c[-1]
  keys = ("flops", "optimal_seconds", "bytes_accessed", "kernel_flops")
  out = {k: c[0][k] + num_layers * (c[1][k] - c[0][k]) for k in keys}
  out["per_layer"] = {k: c[1][k] - c[0][k] for k in keys}
  out["kernel_launches_per_layer"] = c[1]["kernel_launches"]
  out["sentinel_custom_calls_per_layer"] = c[1]["sentinel_custom_calls"]
  return out


def memory_of(compiled) -> dict:
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
         ("argument", "output", "alias", "temp", "generated_code")}
  peak = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
  out["total"] = max(peak, out["argument"] + out["output"] - out["alias"] + out["temp"]
                     + out["generated_code"])
  return out


# The compiler's two phrasings of an out-of-HBM verdict (the second seen on v5e, just over).
_OOM = re.compile(r"required for .*?\(([\d.]+)([GMK])\) exceeds available HBM \(([\d.]+)G\)"
                  r"|Used ([\d.]+)([GMK]) of ([\d.]+)G hbm")


def oom_bytes(message: str) -> int | None:
  """Bytes the compiler said it needed, from a RESOURCE_EXHAUSTED message."""
  m = _OOM.search(message)
  if not m:
    return None
  value, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(5))
  return int(float(value) * {"G": GIB, "M": 1024 ** 2, "K": 1024}[unit])
