"""Videos encoded per second by ``python -m postcam_jax.data.prepare --latents`` on this machine,
at a small size.

  python benchmarks/prepare_latents.py --workdir /tmp/bench_latents [--vae full|tiny]
      [--scenes 3] [--cameras 4] [--frames 17] [--height 64] [--width 96] [--devices 0]

Generates scenes (``postcam_jax.data.synthetic``, exact depth), writes random-weight model
directories (the Wan-VAE at its full Wan2.1 size, 126.9M parameters, or the tiny one; the umT5 is
the tiny one: the XXL's 5.7B parameters do not fit this CPU's time budget, and one caption per
video costs little next to the VAE), then runs the preparation twice in this process (the first
run compiles; the second, into a new directory, is timed) and prints the job's own summary plus
seconds per model: videos (VAE on the videos), renders (warp + VAE on every pair), captions.
``--devices N`` splits the host's CPU into N XLA devices (the batch is sharded over them).
"""

import argparse
import io
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _parse():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="/tmp/bench_latents")
  parser.add_argument("--vae", choices=("full", "tiny"), default="full")
  parser.add_argument("--scenes", type=int, default=3)
  parser.add_argument("--cameras", type=int, default=4)
  parser.add_argument("--frames", type=int, default=17)
  parser.add_argument("--height", type=int, default=64)
  parser.add_argument("--width", type=int, default=96)
  parser.add_argument("--devices", type=int, default=0, help="XLA CPU devices (0: default)")
  return parser.parse_args()


ARGS = _parse()
if ARGS.devices:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS.devices}"

import sentencepiece  # noqa: E402
from flax import nnx  # noqa: E402

from postcam_jax.convert import t5 as t5_convert  # noqa: E402
from postcam_jax.convert.vae import KIND as VAE_KIND  # noqa: E402
from postcam_jax.data import encoders, latent_job, latents, synthetic  # noqa: E402
from postcam_jax.io import model_dir  # noqa: E402
from postcam_jax.models.t5 import UMT5Config, UMT5Encoder  # noqa: E402
from postcam_jax.models.vae import WanVAE, WanVAEConfig  # noqa: E402


def make_assets(workdir: str, vae_size: str):
  root = os.path.join(workdir, "multicam")
  vae_dir = os.path.join(workdir, f"vae_{vae_size}")
  t5_dir = os.path.join(workdir, "t5_tiny")
  if not os.path.isdir(vae_dir):
    cfg = WanVAEConfig.full() if vae_size == "full" else WanVAEConfig.tiny()
    model_dir.save_model(vae_dir, kind=VAE_KIND, config=cfg.to_dict(),
                         params=model_dir.random_params(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))
  if not os.path.isdir(t5_dir):
    cfg = UMT5Config.tiny()
    model_dir.save_model(t5_dir, kind=t5_convert.KIND, config=cfg.to_dict(),
                         params=model_dir.random_params(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0))))
    spm = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a person walks past coloured balls on a tiled floor"] * 20),
        model_writer=spm, vocab_size=40, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, minloglevel=2)
    os.makedirs(os.path.join(t5_dir, t5_convert.TOKENIZER_DIR))
    with open(os.path.join(t5_dir, t5_convert.TOKENIZER_DIR, "spiece.model"), "wb") as f:
      f.write(spm.getvalue())
  marker = os.path.join(root, f".done_{ARGS.scenes}_{ARGS.cameras}_{ARGS.frames}_"
                              f"{ARGS.height}x{ARGS.width}")
  if not os.path.exists(marker):
    shutil.rmtree(root, ignore_errors=True)
    synthetic.generate(synthetic.GeneratorConfig(
        root=root, num_scenes=ARGS.scenes, num_cameras=ARGS.cameras, num_frames=ARGS.frames,
        height=ARGS.height, width=ARGS.width, crf=0))
    open(marker, "w").close()
  return root, vae_dir, t5_dir


def main():
  root, vae_dir, t5_dir = make_assets(ARGS.workdir, ARGS.vae)
  enc = encoders.Encoders.load(vae_dir, t5_dir)
  print(f"{len(enc.devices)} device(s); VAE {ARGS.vae}; {ARGS.scenes} scenes x {ARGS.cameras} "
        f"cameras x {ARGS.frames} frames at {ARGS.height}x{ARGS.width}")
  for run in ("compile", "timed"):
    out = os.path.join(ARGS.workdir, f"records_{run}")
    shutil.rmtree(out, ignore_errors=True)
    config = latents.LatentConfig(
        root=root, data_dir=out, vae=vae_dir, text_encoder=t5_dir, clip_frames=ARGS.frames,
        height=ARGS.height, width=ARGS.width, scenes_per_shard=1, progress=False)
    enc.counts.clear()
    enc.seconds.clear()
    start = time.perf_counter()
    summary = latent_job.run(config, enc)
    wall = time.perf_counter() - start
    videos = enc.counts["videos"]
    print(f"[{run}] {wall:.1f} s: {videos} videos, {enc.counts['renders']} renders, "
          f"{enc.counts['captions']} captions -> {videos / wall:.3f} videos/s "
          f"({wall / videos:.2f} s per video, everything included)")
    print(f"[{run}] seconds in: " + ", ".join(f"{k} {v:.1f}" for k, v in enc.seconds.items()))
    print("\n".join(f"[{run}] {line}" for line in summary.lines()))


if __name__ == "__main__":
  main()
