"""The plan of one configuration: lower, check memory, compile, price, report."""

import json
import math
import os

from postcam_jax import parallel
from postcam_jax.core import atomic
from postcam_jax.parallel import chips
from postcam_jax.planning.cost import cost_of, layer_extrapolated_cost, memory_of, oom_bytes
from postcam_jax.planning.steps import Request, lower_step
from postcam_jax.planning.topology import GIB, topology_devices


def remat_of(req: Request) -> str:
  return dict(req.config.model).get("remat", "none")


def suggestions(req: Request, n: int, micro_per_chip: int, resident: int, usable: int) -> str:
  """What to change, cheapest first; parameters + optimizer state alone over HBM only shrink by
  sharding them over more chips."""
  if resident > usable:
    k = math.ceil(resident * req.mesh["fsdp"] / (0.8 * usable))
    return f"fsdp>={k} (parameters + optimizer state over >= {k} chips; a larger topology)"
  tips = []
  if remat_of(req) != "full":
    tips.append("remat=full")
  if req.mesh["fsdp"] < n:
    tips.append(f"fsdp={n}")
  if micro_per_chip > 1:
    tips.append(f"optim.accum_steps={2 * int(req.config.optim.accum_steps)}")
  tips.append("a larger topology")
  return " or ".join(tips)


def plan(req: Request, *, price: bool = True, out_dir: str | None = None) -> dict:
  """Lower, check and compile one configuration; the report as a dict (``fits``, ``gap``...)."""
  chip = chips.chip_for_topology(req.topology)
  n = len(topology_devices(req.topology))
  lowered, facts = lower_step(req)
  usable = chip.usable_hbm
  batch_axes = req.mesh["data"] * req.mesh["fsdp"]
  micro = facts.get("micro_batch", facts["samples"])
  report = {"topology": req.topology, "chips": n, "chip": chip.name,
            "usable_hbm_gib": usable / GIB, "bf16_peak": chip.bf16_peak,
            "mesh": parallel.mesh_spec_str(req.mesh), "step": req.step, "stage": req.stage,
            "latent": list(req.latent), "render": list(req.render) if req.render else None,
            "remat": remat_of(req), "precision": dict(req.config.model).get("precision"),
            "attention": dict(req.config.model).get("attention", "auto"),
            "accum_steps": facts["repeats"] if req.step == "train" else None,
            **{k: facts[k] for k in ("param_bytes", "opt_state_bytes", "model_flops", "tokens",
                                     "samples", "num_layers")}}
  resident = facts["param_bytes"] + facts["opt_state_bytes"] + facts.get("batch_bytes", 0)
  compiled = None
  if resident > usable:
    report.update(fits=False, need_bytes=resident, basis="arguments (eval_shape, not compiled)")
  else:
    try:
      compiled = lowered.compile()
    except Exception as e:  # the compiler's own out-of-memory verdict
      need = oom_bytes(str(e))
      if need is None:
        raise
      report.update(fits=False, need_bytes=need, basis="compiler RESOURCE_EXHAUSTED")
  if compiled is not None:
    mem = memory_of(compiled)
    report.update(memory=mem, need_bytes=mem["total"], basis="compiled memory_analysis",
                  fits=mem["total"] <= usable, raw_cost=cost_of(compiled))
  if not report["fits"]:
    gap = report["need_bytes"] - usable
    report["gap"] = (f"{gap / GIB:.1f} GiB over per chip ({report['need_bytes'] / GIB:.1f} GiB "
                     f"needed by the {report['basis']}, {usable / GIB:.2f} GiB usable on "
                     f"{chip.name}); try "
                     f"{suggestions(req, n, max(1, micro // batch_axes), resident, usable)}")
  elif price:
    est = layer_extrapolated_cost(req, facts["num_layers"])
    seconds_once = est["optimal_seconds"] + est["kernel_flops"] / chip.bf16_peak
    seconds = facts["repeats"] * seconds_once
    report.update(
        estimate=est, step_seconds=seconds,
        compiler_flops=facts["repeats"] * n * (est["flops"] + est["kernel_flops"]),
        mfu=facts["model_flops"] / (seconds * n * chip.bf16_peak),
        tokens_per_second=facts["tokens"] / seconds,
        samples_per_second=facts["samples"] / seconds)
  if out_dir:
    write_report(report, compiled, out_dir)
  return report


def write_report(report: dict, compiled, out_dir: str):
  """report.json, report.txt and hlo.txt in ``out_dir``, each appearing whole."""
  texts = {"report.json": json.dumps(report, indent=1, default=str),
           "report.txt": format_report(report) + "\n"}
  if compiled is not None:
    texts["hlo.txt"] = compiled.as_text()
  for name, text in texts.items():
    with atomic.atomic_file(os.path.join(out_dir, name)) as tmp, open(tmp, "w") as f:
      f.write(text)


def format_report(r: dict) -> str:
  g = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
  lines = [f"{r['step']} on {r['topology']} ({r['chips']} x {r['chip']}, "
           f"{r['usable_hbm_gib']:.2f} GiB usable HBM each), mesh {r['mesh']}, remat "
           f"{r['remat']}, precision {r['precision']}, attention {r['attention']}",
           f"  parameters      {g(r['param_bytes'])} per chip",
           f"  optimizer state {g(r['opt_state_bytes'])} per chip"]
  if "memory" in r:
    for k in ("argument", "output", "alias", "temp", "generated_code"):
      lines.append(f"  {k:15s} {g(r['memory'][k])}")
  lines.append(f"  total           {g(r['need_bytes'])} ({r['basis']}): "
               + ("fits" if r["fits"] else f"DOES NOT FIT: {r['gap']}"))
  if "step_seconds" in r:
    e = r["estimate"]
    lines += [
        f"  compiler FLOPs  {r['compiler_flops']:.4g} (all chips; splash kernels added: "
        f"{e['kernel_flops']:.4g} per chip per repeat) vs analytic model FLOPs "
        f"{r['model_flops']:.4g}",
        f"  estimated time  {r['step_seconds']:.4f} s "
        + ("per video (every sampling step, CFG included)" if r["step"] == "sample"
           else "per step")
        + " (cost model optimal_seconds, layers extrapolated from 0/1-layer compiles, splash "
        "priced at bf16 peak"
        + (", the -1 s ConcatBitcast sentinels taken out"
           if e.get("sentinel_custom_calls_per_layer") else "")
        + ")",
        f"  MFU             {100 * r['mfu']:.1f} % of {r['bf16_peak'] / 1e12:.0f} TFLOP/s x "
        f"{r['chips']}",
        f"  tokens/s        {r['tokens_per_second']:.0f}   samples/s {r['samples_per_second']:.3f}"]
  return "\n".join(lines)
