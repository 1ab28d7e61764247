"""Full-size Wan2.1-T2V-1.3B: random weights saved by diffusers, converted by the CLI, checked
on a small latent. Needs ~6 GB of disk and ~12 GB of memory; not a CI test.

  python benchmarks/convert_1p3b.py --workdir /tmp/wan13b

Reports conversion time, the converter's peak resident memory (a child process, measured by
getrusage) and the parity error against diffusers' forward, as is and with the original's
float64 time sinusoid swapped in (diffusers rounds ``t * omega`` to float32).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _timing  # noqa: E402
from postcam_jax.io import model_dir  # noqa: E402
from tests import reference  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--workdir", default="/tmp/wan13b")
  args = p.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  src, out = f"{args.workdir}/diffusers", f"{args.workdir}/jax"
  cfg = reference.tiny_wan_kwargs(dim=1536, num_heads=12, ffn_dim=8960, num_layers=30,
                                  text_dim=4096)
  if not os.path.exists(f"{src}/config.json"):
    ref = reference.diffusers_wan(cfg, seed=0)
    ref.save_pretrained(src)
  else:
    ref = None
  size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)) / 2**30
  t0 = time.time()
  proc = subprocess.run([sys.executable, f"{REPO}/tools/convert_weights.py", "dit", "--input",
                         src, "--output", out, "--overwrite"], capture_output=True, text=True)
  t_conv = time.time() - t0
  assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
  peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
  if ref is None:
    ref = reference.diffusers_wan(cfg, seed=0)  # same seed -> same weights
  model = model_dir.load_dit(out)
  rng = np.random.default_rng(0)
  lat = rng.standard_normal((1, 2, 8, 8, 16)).astype(np.float32)
  t = np.array([700.0], np.float32)
  ctx = rng.standard_normal((1, 12, 4096)).astype(np.float32)
  want = reference.diffusers_forward(ref, lat, t, ctx, 512)
  got = np.asarray(model(jnp.asarray(lat), jnp.asarray(t), jnp.asarray(ctx)))
  # diffusers rounds t * omega to float32; the original Wan (and this port) do not.
  exact = reference.diffusers_forward(reference.with_exact_time_sinusoid(ref), lat, t, ctx, 512)
  result = dict(input_gib=round(size, 2), convert_seconds=round(t_conv, 1),
                convert_peak_rss_gib=round(peak_child, 2), parity=_timing.rel_err(got, want),
                parity_exact_time_sinusoid=_timing.rel_err(got, exact),
                params=int(sum(np.prod(v.shape) for v in
                               model_dir.to_numpy_flat(model).values())))
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
