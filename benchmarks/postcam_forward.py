"""The jitted PostCam forward against the release's PyTorch forward, side by side in one run.

  python benchmarks/postcam_forward.py [--sizes 2k,8k,35k] [--head-dims 64,128] [--threads N]
      [--repeats 2] [--release-checkout DIR] [--precision float32]

For every size and head_dim the same weights (random, every parameter perturbed) and inputs go
through both forwards, each in its own process pinned to the same ``--threads`` CPUs (default:
all of this process's), torch with as many threads: the JAX side (``_side_jax.py``: jitted,
compiled once, timed after a warm-up call) and the release's eager forward (``_side_torch.py``:
``tests/release_reference.ReleaseWanModel``, the release's code path checked against its own
fixture, or the release's ``WanModel`` from ``--release-checkout``). Prints per row the best wall
time of each side, their ratio (JAX / PyTorch: <= 1 means JAX is faster), the peak resident
memory of each process and its rise during the timed forwards, the parity of the outputs, and
the machine's 1-minute load average after the row (above the CPU count, other processes were
competing for the cores: the times are then upper bounds for both sides). Exits 1 when the worst
ratio is above 1.0 (issue 24's target: the jitted forward no slower than the release's).

Sizes (model dim 512, ffn 1536, text_dim 512, a 512-row context; render latent 4x smaller):

| name | latent [F, H, W] | main tokens (target + source) | render tokens | layers |
|---|---|---|---|---|
| 2k | 11, 16, 24 | 2,112 | 66 | 8 |
| 8k | 11, 30, 52 | 8,580 | 198 | 8 |
| 35k | 11, 60, 104 | 34,320 (480x832x41) | 1,001 | 2 |
"""

import argparse
import os
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import _procs  # noqa: E402

SIZES = {"2k": ((11, 16, 24), 8), "8k": ((11, 30, 52), 8), "35k": ((11, 60, 104), 2)}
GIB = 2.0 ** 30


def model_flags(dim, head_dim, layers, args):
  return ["--dim", str(dim), "--heads", str(dim // head_dim), "--ffn", str(args.ffn),
          "--layers", str(layers), "--text-dim", str(args.text_dim), "--threads",
          str(args.threads), "--repeats", str(args.repeats)]


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def row(name, latent, layers, head_dim, args, workdir):
  f, h, w = latent
  flags = model_flags(args.dim, head_dim, layers, args)
  jax_side = _procs.run_child([os.path.join(REPO, "benchmarks", "_side_jax.py"), "--model",
                               "postcam", "--workdir", workdir, "--latent", f"{f},{h},{w}",
                               "--precision", args.precision, *flags])
  torch_flags = ["--release-checkout", args.release_checkout] if args.release_checkout else []
  torch_side = _procs.run_child([os.path.join(REPO, "benchmarks", "_side_torch.py"), "--model",
                                 "postcam", "--workdir", workdir, *flags, *torch_flags])
  parity = rel_err(np.load(os.path.join(workdir, "jax_out.npy")),
                   np.load(os.path.join(workdir, "torch_out.npy")))
  return dict(size=name, latent=latent, main_tokens=2 * f * (h // 2) * (w // 2),
              render_tokens=f * (h // 8) * (w // 8), layers=layers, head_dim=head_dim,
              jax=jax_side, torch=torch_side, ratio=jax_side["seconds"] / torch_side["seconds"],
              parity=parity, load=os.getloadavg()[0])


def measured_columns(r) -> str:
  """The table's columns from "JAX s" on, shared by this benchmark and dit_forward's."""
  j, t = r["jax"], r["torch"]
  return (f"{j['seconds']:.3f} | {t['seconds']:.3f} | **{r['ratio']:.2f}** | "
          f"{j['peak_rss'] / GIB:.2f} / {j['forward_extra_rss'] / GIB:.2f} | "
          f"{t['peak_rss'] / GIB:.2f} / {t['forward_extra_rss'] / GIB:.2f} | "
          f"{j['compile_seconds']:.1f} | {r['parity']:.1e} | {r['load']:.1f} |")


def format_row(r) -> str:
  return (f"| {r['size']} | {r['main_tokens']:,} + {r['render_tokens']:,} | {r['head_dim']} | "
          f"{r['layers']} | {measured_columns(r)}")


HEADER = ("| size | main + render tokens | head_dim | layers | JAX s | PyTorch s | JAX / PyTorch | "
          "JAX peak / forward GiB | PyTorch peak / forward GiB | JAX compile s | parity | load |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def comparison_parser(description: str) -> argparse.ArgumentParser:
  """The flags both side-by-side benchmarks take (this one and ``dit_forward.py``)."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--sizes", default="2k,8k,35k")
  p.add_argument("--head-dims", default="64,128")
  p.add_argument("--threads", type=int, default=0, help="CPUs per side (0: all of this process's)")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--ffn", type=int, default=1536)
  p.add_argument("--text-dim", type=int, default=512)
  p.add_argument("--layers", default="", help="override the layers of every size")
  p.add_argument("--precision", default="float32")
  return p


TARGET_RATIO = 1.0  # issue 24: the jitted forward no slower than the release's eager one


def run_table(args, sizes: dict, make_row, format_fn, header: str, reference: str):
  """One row per (size, head_dim) of ``args``, printed as it finishes, then the versions, the
  thread counts and the worst JAX / PyTorch ratio; returns 1 if that misses TARGET_RATIO."""
  args.threads = args.threads or len(os.sched_getaffinity(0))
  print(f"{args.threads} CPU thread(s) per side; {os.cpu_count()} CPUs on this machine")
  print(header, flush=True)
  rows = []
  for name in args.sizes.split(","):
    latent, layers = sizes[name]
    layers = int(args.layers) if args.layers else layers
    for head_dim in (int(d) for d in args.head_dims.split(",")):
      with tempfile.TemporaryDirectory() as workdir:
        r = make_row(name, latent, layers, head_dim, args, workdir)
      rows.append(r)
      print(format_fn(r), flush=True)
  first = rows[0]
  print(f"jax {first['jax']['jax']}, torch {first['torch']['torch']} ({reference(first)}), "
        f"threads: jax {first['jax']['threads']}, torch {first['torch']['threads']}")
  worst = max(rows, key=lambda r: r["ratio"])
  met = worst["ratio"] <= TARGET_RATIO
  print(f"worst JAX / PyTorch: {worst['ratio']:.2f} ({worst['size']}, head_dim "
        f"{worst['head_dim']}): target <= {TARGET_RATIO:.1f} {'met' if met else 'MISSED'}")
  return 0 if met else 1  # the exit status: a benchmark that fails when the target is missed


def main():
  p = comparison_parser(__doc__.split("\n\n")[0])
  p.add_argument("--release-checkout", default="")
  return run_table(p.parse_args(), SIZES, row, format_row, HEADER,
                   lambda first: first["torch"]["reference"])


if __name__ == "__main__":
  sys.exit(main())
