"""Validation loss with and without camera + render, by step, of one or more training runs.

  python benchmarks/gap_curves.py --out docs/experiments_dropout.png \
      "seed 0=demo_train/train/metrics.jsonl" "seed 1=other/train/metrics.jsonl"

Each run is ``LABEL=PATH``, PATH a run's ``metrics.jsonl`` (the trainer's, also what ``python -m
postcam_jax.demo --train`` writes under its workdir's ``train/``) logged with
``eval.no_condition_baseline``. Plots ``val/loss`` (solid) and ``val/loss_no_condition`` (dashed)
by step on the left, their difference (what the conditions remove from the loss) on the right,
writes the PNG and prints each run's values at its last validation.
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from postcam_jax.core import atomic  # noqa: E402

KEYS = ("val/loss", "val/loss_no_condition")


def read_curves(path: str) -> dict[str, list[tuple[int, float]]]:
  """{key: [(step, value)]} of the validation records of one metrics.jsonl."""
  curves = {k: [] for k in KEYS}
  try:
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        for k in KEYS:
          if k in record:
            curves[k].append((int(record["step"]), float(record[k])))
  except OSError as e:
    raise SystemExit(f"error: cannot read {path}: {e.strerror}; give a run's "
                     f"train/metrics.jsonl") from None
  except (ValueError, KeyError):
    raise SystemExit(f"error: {path} is not a trainer's metrics.jsonl (a line is not a JSON "
                     f"record with a step)") from None
  if not curves["val/loss_no_condition"]:
    raise SystemExit(f"error: {path} has no val/loss_no_condition records; train with "
                     f"eval.no_condition_baseline=True (configs/demo.py does)")
  return curves


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("runs", nargs="+", metavar="LABEL=PATH", help="a run's metrics.jsonl")
  parser.add_argument("--out", required=True, help="the PNG to write")
  args = parser.parse_args(argv)
  runs = []
  for spec in args.runs:
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
      parser.error(f"a run is LABEL=PATH, got {spec!r}")
    runs.append((label, read_curves(path)))

  fig, (ax_loss, ax_gap) = plt.subplots(1, 2, figsize=(11, 4))
  print(f"{'run':<32} {'step':>6} {'val/loss':>9} {'no condition':>13} {'difference':>11}")
  for i, (label, curves) in enumerate(runs):
    color = f"C{i}"
    with_c, without = dict(curves["val/loss"]), dict(curves["val/loss_no_condition"])
    steps = sorted(set(with_c) & set(without))
    ax_loss.plot(steps, [with_c[s] for s in steps], "-o", color=color, ms=3, label=label)
    ax_loss.plot(steps, [without[s] for s in steps], "--", color=color)
    ax_gap.plot(steps, [without[s] - with_c[s] for s in steps], "-o", color=color, ms=3,
                label=label)
    last = steps[-1]
    print(f"{label:<32} {last:>6} {with_c[last]:>9.4f} {without[last]:>13.4f} "
          f"{without[last] - with_c[last]:>11.4f}")
  ax_loss.set(xlabel="step", ylabel="held-out loss",
              title="with camera + render (solid), without (dashed)")
  ax_gap.set(xlabel="step", ylabel="loss without - loss with",
             title="what camera + render remove from the loss")
  for ax in (ax_loss, ax_gap):
    ax.grid(alpha=0.3)
  ax_gap.legend(fontsize=8)
  fig.tight_layout()
  with atomic.atomic_file(args.out, ".png") as tmp:  # never half a PNG
    fig.savefig(tmp, dpi=110, format="png")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
