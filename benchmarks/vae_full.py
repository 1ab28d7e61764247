"""Full-size Wan-VAE (random weights) encode + decode of one clip: time and peak memory.

Run (2-core CPU, ~20-40 min at the default size)::

  JAX_PLATFORMS=cpu .venv/bin/python benchmarks/vae_full.py            # 41 x 480 x 832
  JAX_PLATFORMS=cpu .venv/bin/python benchmarks/vae_full.py --frames 5 --height 64 --width 64

Prints one JSON line: parameter count (checked against Wan2.1's 126,892,531), wall time of the
first encode and decode call (compilation included) and of a second call when ``--repeat``, the
process CPU time of each (all threads; robust to a busy machine), and the process's peak resident
memory (``resource.getrusage``) after each stage. A first line is printed after the encode. With ``--diffusers``
the same clip also runs through diffusers' ``AutoencoderKLWan`` (same weights) for time and
agreement.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from postcam_jax.models.vae import WanVAE, WanVAEConfig  # pylint: disable=wrong-import-position

WAN_VAE_PARAMS = 126_892_531


def peak_rss_gib() -> float:
  # ru_maxrss is KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def timed(fn, *args):
  """(result, wall seconds, process CPU seconds summed over threads)."""
  t0, c0 = time.perf_counter(), cpu_seconds()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - t0, cpu_seconds() - c0


def report(result):
  print(json.dumps({k: float(f"{v:.3g}") if isinstance(v, float) else v
                    for k, v in result.items()}), flush=True)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--frames", type=int, default=41)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--repeat", action="store_true", help="time a second (compiled) call too")
  p.add_argument("--diffusers", action="store_true", help="also run diffusers' AutoencoderKLWan")
  args = p.parse_args(argv)

  cfg = WanVAEConfig.full()
  vae = WanVAE(cfg, rngs=nnx.Rngs(0))
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(vae, nnx.Param)))
  if n_params != WAN_VAE_PARAMS:
    raise SystemExit(f"parameter count {n_params:,} != Wan2.1's {WAN_VAE_PARAMS:,}")
  result = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {jax.default_backend()}",
            "params": n_params, "clip": [1, args.frames, args.height, args.width, 3],
            "rss_after_init_gib": round(peak_rss_gib(), 2)}
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.uniform(-1, 1, (1, args.frames, args.height, args.width, 3)),
                      jnp.float32)
  latent, result["encode_s"], result["encode_cpu_s"] = timed(vae.encode, video)
  result["rss_after_encode_gib"] = round(peak_rss_gib(), 2)
  result["latent"] = list(latent.shape)
  report(result)  # partial result first: the decode takes longer
  recon, result["decode_s"], result["decode_cpu_s"] = timed(vae.decode, latent)
  result["rss_after_decode_gib"] = round(peak_rss_gib(), 2)
  result["video"] = list(recon.shape)
  if args.repeat:
    _, result["encode_again_s"], _ = timed(vae.encode, video)
    _, result["decode_again_s"], _ = timed(vae.decode, latent)
  if args.diffusers:
    result.update(run_diffusers(vae, np.asarray(video), np.asarray(latent), np.asarray(recon)))
  report(result)


def run_diffusers(vae, video, latent, recon) -> dict:
  """The same weights and clip through diffusers (converted back to torch layout)."""
  import torch  # pylint: disable=import-outside-toplevel
  from diffusers import AutoencoderKLWan  # pylint: disable=import-outside-toplevel

  from postcam_jax.convert import vae as convert  # pylint: disable=import-outside-toplevel
  from postcam_jax.io.model_dir import to_numpy_flat  # pylint: disable=import-outside-toplevel

  device = "cuda" if torch.cuda.is_available() else "cpu"
  ref = AutoencoderKLWan().to(device).eval()
  flat = to_numpy_flat(vae)
  sd = {}
  for e in convert.vae_table(vae.cfg):
    want = tuple(ref.state_dict()[e.diffusers].shape)
    arr = flat[e.target]
    arr = np.moveaxis(arr, (-1, -2), (0, 1)) if arr.ndim > 1 else arr
    sd[e.diffusers] = torch.from_numpy(np.array(arr).reshape(want))
  ref.load_state_dict(sd)
  mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1).to(device)
  std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1).to(device)
  out = {}
  with torch.no_grad():
    x = torch.from_numpy(video).permute(0, 4, 1, 2, 3).to(device)
    t0 = time.perf_counter()
    mu = ref.encode(x).latent_dist.mean
    out["diffusers_encode_s"] = time.perf_counter() - t0
    z = ((mu - mean) / std).permute(0, 2, 3, 4, 1).cpu().numpy()
    out["encode_max_rel_err"] = float(np.abs(z - latent).max() / np.abs(z).max())
    out["latent_std"] = float(z.std())
    t0 = time.perf_counter()
    v = ref.decode(torch.from_numpy(latent).permute(0, 4, 1, 2, 3).to(device) * std + mean)
    out["diffusers_decode_s"] = time.perf_counter() - t0
    v = v.sample.permute(0, 2, 3, 4, 1).cpu().numpy()
    out["decode_max_abs_err"] = float(np.abs(v - recon).max())
    out["video_std"] = float(v.std())
  return out


if __name__ == "__main__":
  main()
