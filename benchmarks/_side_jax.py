"""The JAX side of ``benchmarks/postcam_forward.py`` and ``benchmarks/dit_forward.py``: one jitted
forward, timed in its own process pinned to ``--threads`` CPUs (started by those scripts).

postcam: builds the PostCam from ``--seed`` (every parameter perturbed, so no output is trivially
zero), writes its weights in the release's layout (``release.npz``) and the inputs
(``inputs.npz``) for the torch side, then times the forward. dit: converts the diffusers model the
torch side saved (``diffusers/``) and times the DiT on the same inputs. Writes ``jax_out.npy``
(channels-last) and prints one result line (seconds, compile seconds, compiled temp bytes, peak
resident memory of the process and during the timed forwards).
"""

import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import _procs  # noqa: E402


def parse(argv=None):
  p = _procs.side_arguments(__doc__.split("\n\n")[0], "11,16,24",
                            "F,H,W of the (target) latent")
  p.add_argument("--precision", default="float32")
  p.add_argument("--attention", default="sequence")
  return p.parse_args(argv)


ARGS = parse() if __name__ == "__main__" else None
THREADS = _procs.pin(ARGS.threads) if ARGS else 0
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from postcam_jax.convert import postcam as postcam_convert  # noqa: E402
from postcam_jax.convert import wan as wan_convert  # noqa: E402
from postcam_jax.io import model_dir  # noqa: E402
from postcam_jax.models.postcam import PostCamConfig, PostCamModel  # noqa: E402

TEXT_TOKENS = 16   # real prompt rows; the rest of the 512-row context is zero (the release pads)
TEXT_LEN = 512


def perturb(model, seed: int, scale: float = 0.02):
  """Every parameter + N(0, scale) (the init's zero head and biases made non-zero)."""
  state = nnx.state(model, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  nnx.update(model, jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                              for x, k in zip(leaves, keys)]))


def postcam_inputs(latent, text_dim, seed):
  """Channels-last numpy inputs of one PostCam forward (render latent 4x smaller)."""
  f, h, w = latent
  rng = np.random.default_rng(seed)
  normal = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
  context = np.zeros((1, TEXT_LEN, text_dim), np.float32)
  context[:, :TEXT_TOKENS] = normal(1, TEXT_TOKENS, text_dim)
  camera = np.tile(np.eye(4, dtype=np.float32)[:3], (1, 11, 1, 1)) + 0.1 * normal(1, 11, 3, 4)
  return dict(latents=normal(1, f, h, w, 16), timesteps=np.array([700.0], np.float32),
              context=context, source_latents=normal(1, f, h, w, 16),
              camera=camera.reshape(1, 11, 12), render_latents=normal(1, f, h // 4, w // 4, 16))


def build_postcam(args, latent):
  cfg = PostCamConfig(dim=args.dim, num_heads=args.heads, ffn_dim=args.ffn,
                      num_layers=args.layers, text_dim=args.text_dim, text_len=TEXT_LEN,
                      precision=args.precision, attention=args.attention)
  model = PostCamModel(cfg, rngs=nnx.Rngs(args.seed))
  perturb(model, args.seed)
  flat = model_dir.to_numpy_flat(model)
  np.savez(os.path.join(args.workdir, "release.npz"),
           **postcam_convert.release_state_dict(flat, cfg.num_layers))
  inputs = postcam_inputs(latent, args.text_dim, args.seed)
  np.savez(os.path.join(args.workdir, "inputs.npz"), **inputs)
  return model, {k: jnp.asarray(v) for k, v in inputs.items()}


def build_dit(args):
  src = os.path.join(args.workdir, "diffusers")
  out = os.path.join(args.workdir, "jax_dit")
  wan_convert.convert_dit(src, out, overwrite=True)
  model = model_dir.load_dit(out, precision=args.precision, attention=args.attention)
  inputs = np.load(os.path.join(args.workdir, "inputs.npz"))
  return model, {k: jnp.asarray(inputs[k]) for k in ("latents", "timesteps", "context")}


def main(args):
  latent = tuple(int(v) for v in args.latent.split(","))
  if args.model == "postcam":
    model, inputs = build_postcam(args, latent)
  else:
    model, inputs = build_dit(args)
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(**x))
  start = time.perf_counter()
  compiled = fwd.lower(state, inputs).compile()
  compile_s = time.perf_counter() - start
  temp = compiled.memory_analysis().temp_size_in_bytes
  out = jax.block_until_ready(fwd(state, inputs))  # warm-up
  before = _procs.rss_bytes()
  _procs.reset_peak_rss()
  seconds = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fwd(state, inputs))
    seconds.append(time.perf_counter() - start)
  peak = _procs.peak_rss_bytes()
  np.save(os.path.join(args.workdir, "jax_out.npy"), np.asarray(out))
  _procs.emit({"seconds": min(seconds), "all_seconds": seconds, "compile_seconds": compile_s,
               "temp_bytes": temp, "peak_rss": peak, "forward_extra_rss": peak - before,
               "threads": THREADS, "jax": jax.__version__})


if __name__ == "__main__":
  main(ARGS)
