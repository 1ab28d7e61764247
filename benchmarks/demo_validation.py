"""Scores a demo checkpoint on every held-out pair of its recipe's validation scenes.

  python benchmarks/demo_validation.py [--checkpoint postcam_jax/assets/demo_postcam.safetensors]
                                       [--pairs 0] [--sample_steps 25] [--draws 1]
                                       [--scenes N --scene_seed S]

``make demo`` scores 12 pairs of one unseen scene; this scores the validation scenes the trainer
evaluates on (``data.num_eval_scenes`` scenes, all ordered camera pairs: 24 for the recipe), made
from the recipe recorded in the checkpoint's sidecar, so a checkpoint of another recipe is scored
on its own data. Every pair is sampled twice with the same noise (25 Euler steps), with and
without camera + render (``--draws``: several noises per pair, scores
averaged), and scored like the demo: PSNR / SSIM against the true target of the
prediction, the same model without camera + render, the render alone, copy-the-source, the mean
image and the codec ceiling. The last line is issue 23's measure: what camera + render add (dB),
with its standard error over pairs. The numbers of docs/experiments.md come from this command.
``--scenes N --scene_seed S`` scores other held-out scenes instead (N scenes from generator seed
S, each encoded with the checkpoint's own codec): one set of scenes for checkpoints trained on
different data seeds, so their gaps differ only by training, not by their validation scenes.
"""

import argparse
import os
import sys
import tempfile

import jax.numpy as jnp
import ml_collections
import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from postcam_jax import demo  # noqa: E402
from postcam_jax.inference import sampling  # noqa: E402
from postcam_jax.training import data as train_data  # noqa: E402
from postcam_jax.training import export  # noqa: E402


class SceneSeedError(ValueError):
  """A --scene_seed that would score the checkpoint's own training scenes."""


def score_validation(checkpoint: str, num_pairs: int, sample_steps: int, cache_dir: str,
                     draws: int = 1, scenes: int = 0, scene_seed: int | None = None):
  """Rows of ``demo.score_pair`` (one per pair) for ``checkpoint``'s validation pairs; with
  ``draws`` > 1 each pair is sampled with that many noises and its scores averaged. ``scenes``
  and ``scene_seed``: other held-out scenes (that many, from that generator seed) instead of the
  recipe's, encoded with the checkpoint's own codec and captions."""
  model, codec, info = export.load_bundle(checkpoint)
  if not isinstance(info.get("recipe"), dict) or "data" not in info["recipe"]:
    raise export.BundleError(f"{export.sidecar(checkpoint)} records no recipe data (not made by "
                             f"python -m postcam_jax.demo --train)")
  data = ml_collections.ConfigDict(info["recipe"]["data"])
  data.cache_dir = cache_dir
  if scenes:
    data.num_eval_scenes = scenes
  if scene_seed is not None:
    if not data.num_eval_scenes:
      raise SceneSeedError(f"--scene_seed {scene_seed}: this recipe holds out pairs of its "
                           f"training scenes (no held-out scenes); give --scenes N too")
    data.eval_seed = scene_seed
    try:
      train_data.held_out_seed(data)  # not the training scenes'
    except ValueError as e:
      raise SceneSeedError(f"--scene_seed {scene_seed}: {e}") from None
  pixels = train_data.pixel_examples(data, "eval")
  latents = train_data.synthetic_examples(data, "eval")
  chosen = range(len(pixels)) if num_pairs <= 0 else range(min(num_pairs, len(pixels)))
  batch = lambda key: jnp.asarray(np.stack([latents[i][key] for i in chosen]), jnp.float32)
  common = dict(source_latents=batch("source_latent"), context=batch("text_embedding"),
                negative_context=jnp.zeros_like(batch("text_embedding")),
                num_steps=sample_steps, guidance_scale=1.0)
  videos = [demo.pair_videos(pixels[i], data) for i in chosen]
  per_draw = []
  for draw in range(draws):
    noise = sampling.make_noise(draw, batch("target_latent").shape)
    pred = np.asarray(sampling.sample_latents(
        model, noise=noise, camera=batch("camera"), render_latents=batch("render_latent"),
        **common))
    blind = np.asarray(sampling.sample_latents(
        model, noise=noise, camera=jnp.zeros_like(batch("camera")), render_latents=None,
        **common))
    rows = []
    for j, i in enumerate(chosen):
      rows.append(demo.score_pair(
          f"{i:02d}", target=videos[j]["target"], pred=codec.decode(pred[j]),
          no_condition=codec.decode(blind[j]), render=videos[j]["render"],
          copy_source=videos[j]["source"], mean_image=codec.decode(np.zeros_like(pred[j])),
          codec_ceiling=codec.decode(latents[i]["target_latent"])))
    per_draw.append(rows)
  rows = [dict(demo.mean_scores(list(same)), pair=same[0]["pair"]) for same in zip(*per_draw)]
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", default=os.path.join(
      _REPO, "postcam_jax", "assets", "demo_postcam.safetensors"))
  parser.add_argument("--pairs", type=int, default=0, help="first N pairs; 0: all")
  parser.add_argument("--sample_steps", type=int, default=25)
  parser.add_argument("--draws", type=int, default=1,
                      help="noises per pair (scores averaged): the gap of one draw is noisy")
  parser.add_argument("--scenes", type=int, default=0,
                      help="held-out scenes to score (all their ordered camera pairs); 0: the "
                           "recipe's data.num_eval_scenes")
  parser.add_argument("--scene_seed", type=int, default=None,
                      help="generator seed of those scenes (default: the recipe's, data.seed + "
                           "1000); one seed for checkpoints of several data seeds scores them "
                           "on the same scenes")
  args = parser.parse_args()
  if args.draws < 1 or args.sample_steps < 1 or args.scenes < 0:
    parser.error("--draws and --sample_steps must be at least 1, --scenes at least 0")
  try:
    with tempfile.TemporaryDirectory() as cache_dir:
      rows = score_validation(args.checkpoint, args.pairs, args.sample_steps, cache_dir,
                              args.draws, args.scenes, args.scene_seed)
  except export.BundleError as e:
    sys.exit(f"error: --checkpoint {e}")
  except SceneSeedError as e:
    sys.exit(f"error: {e}")
  mean = demo.mean_scores(rows)
  print("\n".join(demo.results_table(rows, mean)))
  gaps = np.array([r["pred_psnr"] - r["no_condition_psnr"] for r in rows])
  se = gaps.std(ddof=1) / np.sqrt(len(gaps)) if len(gaps) > 1 else float("nan")
  print(f"camera + render add {gaps.mean():+.2f} dB PSNR (standard error {se:.2f} over "
        f"{len(gaps)} pairs x {args.draws} noise draw(s); {int((gaps > 0).sum())} pairs gain), "
        f"{mean['pred_ssim'] - mean['no_condition_ssim']:+.3f} SSIM")


if __name__ == "__main__":
  main()
