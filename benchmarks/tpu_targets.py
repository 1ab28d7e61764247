"""The TPU planning targets of issue 12, checked by ahead-of-time compilation (no TPU needed).

  python benchmarks/tpu_targets.py                      # both targets (about 10 min on 2 cores)
  python benchmarks/tpu_targets.py --only wan_forward   # one of them
  python benchmarks/tpu_targets.py --out /tmp/targets   # also keep each report + HLO

Targets (estimates of XLA's TPU cost model, priced by ``postcam_jax.planning``):
  wan_forward  plain Wan2.1-1.3B forward, latent [1, 21, 60, 104, 16], text [1, 512, 4096], bf16
               (``mixed``), on v5p:1x1x1: estimated time <= 0.75 s (maxdiffusion's default path
               compiles to 0.79 s there once its attention is priced; peak-FLOPs bound 0.62 s);
  train_v5p8   PostCam-1.3B training, global batch 16 at 480x832x41, on v5p:2x2x2 with the best
               mesh of the sweep (fsdp=8, remat dots_no_batch, accumulation 2): MFU >= 50 %.
Prints one line per target and exits 1 when a target is missed (or 2 when a plan does not fit),
so a change that slows the compiled step shows up here.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from postcam_jax import planning  # noqa: E402

CONFIG = "configs/postcam_1p3b.py"

# Each target is the planner's own command line (as in docs/performance.md) and its bound.
TARGETS = {
    "wan_forward": dict(
        argv=["--topology", "v5p:1x1x1", "--step", "wan_forward", "--latent", "21,60,104",
              "--batch", "1", "--config.model.remat=none"],
        metric="step_seconds", bound=0.75, better="lower"),
    "train_v5p8": dict(
        argv=["--topology", "v5p:2x2x2", "--mesh", "fsdp=8", "--config.model.remat=dots_no_batch",
              "--config.optim.accum_steps=2"],
        metric="mfu", bound=0.50, better="higher"),
}


def request_for(target: dict) -> "planning.Request":
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  req, _, _ = planning.parse_request(["--config", os.path.join(root, CONFIG), *target["argv"]])
  return req


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--only", choices=sorted(TARGETS), action="append",
                 help="check only this target (repeatable); default: all")
  p.add_argument("--out", default=None, help="directory for each target's report and HLO")
  args = p.parse_args(argv)
  status = 0
  for name in args.only or list(TARGETS):
    target = TARGETS[name]
    out = os.path.join(args.out, name) if args.out else None
    report = planning.planner.plan(request_for(target), out_dir=out)
    if not report["fits"]:
      print(f"{name}: does not fit: {report['gap']}")
      status = max(status, 2)
      continue
    value = report[target["metric"]]
    ok = value <= target["bound"] if target["better"] == "lower" else value >= target["bound"]
    sign = "<=" if target["better"] == "lower" else ">="
    print(f"{name} on {report['topology']} ({report['mesh']}): {target['metric']} {value:.4f} "
          f"(target {sign} {target['bound']}): {'met' if ok else 'MISSED'}; step "
          f"{report['step_seconds']:.4f} s, MFU {100 * report['mfu']:.1f} %, "
          f"{report['need_bytes'] / planning.GIB:.2f} GiB/chip")
    if not ok:
      status = max(status, 1)
  return status


if __name__ == "__main__":
  sys.exit(main())
