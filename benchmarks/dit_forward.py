"""The jitted Wan DiT forward against diffusers' eager ``WanTransformer3DModel``, side by side.

  python benchmarks/dit_forward.py [--sizes 2k,8k,35k] [--head-dims 64,128] [--threads N]
      [--repeats 2] [--precision float32]

For every size and head_dim, diffusers builds the model with random weights (every parameter
perturbed) and runs it (``_side_torch.py``, its own process pinned to ``--threads`` CPUs, torch
with as many threads); the JAX side converts those weights through ``convert_dit`` and runs the
jitted forward on the same inputs (``_side_jax.py``, same CPUs). Prints per row the best wall time
of each side, JAX / PyTorch (<= 1: JAX is faster), peak resident memory of each process and its
rise during the timed forwards, JAX's compile time, the parity of the outputs and the 1-minute
load average after the row (see ``postcam_forward.py``). The plain
DiT has no render or camera stream: the release's PostCam forward is
``benchmarks/postcam_forward.py``.

Sizes (model dim 512, ffn 1536, text_dim 512, a 512-row context):

| name | latent [F, H, W] | tokens | layers |
|---|---|---|---|
| 2k | 22, 16, 24 | 2,112 | 8 |
| 8k | 22, 30, 52 | 8,580 | 8 |
| 35k | 22, 60, 104 | 34,320 (the main tokens of PostCam at 480x832x41) | 2 |
"""

import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import _procs  # noqa: E402
from benchmarks.postcam_forward import (  # noqa: E402
    comparison_parser, measured_columns, model_flags, rel_err, run_table)

SIZES = {"2k": ((22, 16, 24), 8), "8k": ((22, 30, 52), 8), "35k": ((22, 60, 104), 2)}
HEADER = ("| size | tokens | head_dim | layers | JAX s | PyTorch s | JAX / PyTorch | "
          "JAX peak / forward GiB | PyTorch peak / forward GiB | JAX compile s | parity | load |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def row(name, latent, layers, head_dim, args, workdir):
  f, h, w = latent
  flags = model_flags(args.dim, head_dim, layers, args)
  shape = ["--latent", f"{f},{h},{w}"]
  torch_side = _procs.run_child([os.path.join(REPO, "benchmarks", "_side_torch.py"), "--model",
                                 "dit", "--workdir", workdir, *shape, *flags])
  jax_side = _procs.run_child([os.path.join(REPO, "benchmarks", "_side_jax.py"), "--model", "dit",
                               "--workdir", workdir, *shape, "--precision", args.precision,
                               *flags])
  parity = rel_err(np.load(os.path.join(workdir, "jax_out.npy")),
                   np.load(os.path.join(workdir, "torch_out.npy")))
  return dict(size=name, tokens=f * (h // 2) * (w // 2), layers=layers, head_dim=head_dim,
              jax=jax_side, torch=torch_side, ratio=jax_side["seconds"] / torch_side["seconds"],
              parity=parity, load=os.getloadavg()[0])


def format_row(r) -> str:
  return (f"| {r['size']} | {r['tokens']:,} | {r['head_dim']} | {r['layers']} | "
          f"{measured_columns(r)}")


def main():
  args = comparison_parser(__doc__.split("\n\n")[0]).parse_args()
  return run_table(args, SIZES, row, format_row, HEADER, lambda first: "diffusers")


if __name__ == "__main__":
  sys.exit(main())
