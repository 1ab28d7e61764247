"""The PyTorch side of ``benchmarks/postcam_forward.py`` and ``benchmarks/dit_forward.py``: one
eager forward, timed in its own process pinned to ``--threads`` CPUs with as many torch threads.

postcam: the release's forward (``tests/release_reference.ReleaseWanModel``, checked against the
release's own fixture, or with ``--release-checkout DIR`` the release's ``WanModel`` imported from
a checkout) on the weights and inputs the JAX side wrote. dit: diffusers'
``WanTransformer3DModel`` with random weights (saved to ``diffusers/`` for the JAX side) on inputs
it writes. Writes ``torch_out.npy`` (channels-last; PostCam: the target half, what postcam-jax
returns) and prints one result line.
"""

import os
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import _procs  # noqa: E402


def parse(argv=None):
  p = _procs.side_arguments(__doc__.split("\n\n")[0], "22,16,24",
                            "F,H,W of the DiT latent (dit only)")
  p.add_argument("--release-checkout", default="", help="a zju3dv/PostCam checkout (postcam)")
  return p.parse_args(argv)


ARGS = parse() if __name__ == "__main__" else None
THREADS = _procs.pin(ARGS.threads) if ARGS else 0

# torchvision's fake-kernel registrations fail against this CPU torch and break diffusers'
# import; only torch.compile uses them (the same stand-in as tests/conftest.py).
sys.modules.setdefault("torchvision._meta_registrations",
                       types.ModuleType("torchvision._meta_registrations"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests import reference, release_reference  # noqa: E402

TEXT_LEN = 512


def postcam_model(args):
  arch = dict(dim=args.dim, ffn_dim=args.ffn, num_heads=args.heads, num_layers=args.layers,
              text_dim=args.text_dim, freq_dim=256, in_dim=16, out_dim=16, eps=1e-6,
              patch_size=(1, 2, 2))
  if args.release_checkout:
    model = release_reference.load_release_model(args.release_checkout, **arch)
  else:
    model = release_reference.ReleaseWanModel(**arch)
  state = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(args.workdir,
                                                                     "release.npz")).items()}
  model.load_state_dict(state, strict=True)
  x = np.load(os.path.join(args.workdir, "inputs.npz"))
  first = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))  # noqa: E731
  frames = x["latents"].shape[1]
  inputs = (torch.cat([first(x["latents"]), first(x["source_latents"])], dim=2),
            torch.from_numpy(x["timesteps"]), torch.from_numpy(x["camera"]).view(1, 11, 3, 4),
            first(x["render_latents"]), torch.from_numpy(x["context"]))

  def run():
    return model(*inputs)[:, :, :frames]

  return model.eval(), run


def dit_model(args):
  cfg = reference.tiny_wan_kwargs(dim=args.dim, num_heads=args.heads, ffn_dim=args.ffn,
                                  num_layers=args.layers, text_dim=args.text_dim,
                                  text_len=TEXT_LEN)
  model = reference.diffusers_wan(cfg, seed=args.seed)
  model.save_pretrained(os.path.join(args.workdir, "diffusers"))
  f, h, w = (int(v) for v in args.latent.split(","))
  rng = np.random.default_rng(args.seed)
  context = np.zeros((1, TEXT_LEN, args.text_dim), np.float32)
  context[:, :16] = rng.standard_normal((1, 16, args.text_dim))
  inputs = dict(latents=rng.standard_normal((1, f, h, w, 16)).astype(np.float32),
                timesteps=np.array([700.0], np.float32), context=context)
  np.savez(os.path.join(args.workdir, "inputs.npz"), **inputs)
  as_torch = (torch.from_numpy(np.ascontiguousarray(np.moveaxis(inputs["latents"], -1, 1))),
              torch.from_numpy(inputs["timesteps"]), torch.from_numpy(context))

  def run():
    return model(hidden_states=as_torch[0], timestep=as_torch[1],
                 encoder_hidden_states=as_torch[2], return_dict=False)[0]

  return model, run


def main(args):
  torch.set_num_threads(THREADS)
  _, run = postcam_model(args) if args.model == "postcam" else dit_model(args)
  with torch.no_grad():
    out = run()  # warm-up
    before = _procs.rss_bytes()
    _procs.reset_peak_rss()
    seconds = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      out = run()
      seconds.append(time.perf_counter() - start)
    peak = _procs.peak_rss_bytes()
  np.save(os.path.join(args.workdir, "torch_out.npy"), np.moveaxis(out.float().numpy(), 1, -1))
  _procs.emit({"seconds": min(seconds), "all_seconds": seconds, "peak_rss": peak,
               "forward_extra_rss": peak - before, "threads": torch.get_num_threads(),
               "torch": torch.__version__,
               "reference": "release checkout" if args.release_checkout else
               ("tests/release_reference.py" if args.model == "postcam" else "diffusers")})


if __name__ == "__main__":
  main(ARGS)
