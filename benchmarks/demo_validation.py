"""Scores a demo checkpoint on every held-out pair of its recipe's validation scenes.

  python benchmarks/demo_validation.py [--checkpoint postcam_jax/assets/demo_postcam.safetensors]
                                       [--pairs 0] [--sample_steps 25] [--draws 1]
                                       [--scenes N --scene_seed S] [--codec_channels 16,48]
                                       [--camera]

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
A last line splits SSIM between the pixels the warp fills and its holes (where the render alone
wins, and what an output through the codec could score at best); ``--codec_channels 16,48,96``
adds the validation targets' SSIM through PCA codecs of those widths. ``--camera`` adds the demo's
camera table: the cameras of the prediction, the prediction without camera + render and the true
target (first noise draw), found by aligning each video to the source's exact depth
(``evaluation.alignment``), against the requested ones (~1 s per video, 3 videos per pair).
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
from postcam_jax.data import codec as codec_lib  # noqa: E402
from postcam_jax.evaluation import fidelity  # noqa: E402
from postcam_jax.inference import sampling  # noqa: E402
from postcam_jax.training import data as train_data  # noqa: E402
from postcam_jax.training import export  # noqa: E402


class SceneSeedError(ValueError):
  """A --scene_seed that would score the checkpoint's own training scenes."""


# Where the render alone wins on SSIM: the pixels the warp fills, which it gives exactly while
# anything decoded from a latent cell is at best the codec's reconstruction there.
SPLIT_VIDEOS = ("pred", "render", "codec_ceiling")


def ssim_split(holes, target, videos) -> dict:
  """SSIM of each video of SPLIT_VIDEOS (``videos``, in [-1, 1]) against ``target`` over the
  pixels the warp fills and over its ``holes`` [T, H, W], the filled fraction of the scored
  pixels, and ``best_through_codec``: the SSIM of a video at the codec ceiling where the warp fills
  and the prediction in the holes (the most a better copy of the render can give)."""
  holes = np.asarray(holes, bool)
  row = {}
  for key in SPLIT_VIDEOS:
    row[f"{key}_ssim_filled"], row[f"{key}_ssim_holes"] = fidelity.ssim_inside_outside(
        videos[key], target, ~holes, peak=2.0)
  r = fidelity.SSIM_RADIUS
  filled = float((~holes[:, r:holes.shape[1] - r, r:holes.shape[2] - r]).mean())
  row["filled_fraction"] = filled
  row["best_through_codec"] = filled * row["codec_ceiling_ssim_filled"] + (
      (1.0 - filled) * row["pred_ssim_holes"] if filled < 1.0 else 0.0)
  return row


def split_line(rows) -> str:
  """The printed summary of :func:`ssim_split` over pairs (pairs without holes skip the holes)."""
  m = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k in _SPLIT_KEYS}
  return (f"SSIM where the warp fills the target ({m['filled_fraction']:.0%} of the scored pixels) "
          f"/ in its holes: prediction {m['pred_ssim_filled']:.3f} / {m['pred_ssim_holes']:.3f}, "
          f"render alone {m['render_ssim_filled']:.3f} / {m['render_ssim_holes']:.3f}, codec "
          f"ceiling {m['codec_ceiling_ssim_filled']:.3f} / {m['codec_ceiling_ssim_holes']:.3f}. "
          f"At the codec ceiling where the warp fills and with the prediction's holes an output "
          f"would score {m['best_through_codec']:.3f} against the render alone's "
          f"{np.mean([r['render_ssim'] for r in rows]):.3f}.")


_SPLIT_KEYS = {f"{k}_ssim_{part}" for k in SPLIT_VIDEOS for part in ("filled", "holes")} | {
    "filled_fraction", "best_through_codec"}


def ceiling_by_channels(data, channels) -> list[str]:
  """Lines: for each codec width in ``channels``, the SSIM of the validation targets through a
  PCA codec of that many channels fitted like the recipe's (on its training videos), over whole
  frames and over the pixels the warp fills: how sharp any output through that codec can be."""
  train = [v.astype(np.float32) / 127.5 - 1.0 for pair in train_data.pixel_examples(data, "train")
           for v in (pair["target_video"], pair["source_video"])]
  pairs = [demo.pair_videos(p, data) for p in train_data.pixel_examples(data, "eval")]
  lines = []
  for c in channels:
    fitted = codec_lib.PCACodec.fit(train, channels=c, seed=data.seed,
                                    whiten=bool(data.get("codec_whiten", True)))
    scores = []
    for v in pairs:
      through = fitted.decode(fitted.encode(v["target"]))
      scores.append((fidelity.ssim(through, v["target"], peak=2.0),
                     fidelity.ssim_inside_outside(through, v["target"],
                                                  ~np.asarray(v["holes"], bool), peak=2.0)[0]))
    whole, filled = np.mean(scores, axis=0)
    lines.append(f"  {c:>4} channels: SSIM {whole:.3f}, where the warp fills {filled:.3f}")
  return lines


def recipe_data(checkpoint: str, cache_dir: str, scenes: int = 0, scene_seed: int | None = None):
  """``checkpoint``'s model, codec and the data config of the recipe it records, its held-out
  scenes replaced by ``scenes`` scenes of generator seed ``scene_seed`` where given."""
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
  return model, codec, data


def score_validation(checkpoint: str, num_pairs: int, sample_steps: int, cache_dir: str,
                     draws: int = 1, scenes: int = 0, scene_seed: int | None = None,
                     camera: bool = False):
  """Rows of ``demo.score_pair`` and :func:`ssim_split` (one per pair) for ``checkpoint``'s
  validation pairs; with ``draws`` > 1 each pair is sampled with that many noises and its scores
  averaged. ``scenes`` and ``scene_seed``: other held-out scenes (that many, from that generator
  seed) instead of the recipe's, encoded with the checkpoint's own codec and captions.
  ``camera``: the rows also hold the demo's camera columns (``demo.camera_rows`` of the first
  draw's videos, cameras found from the source's exact depth)."""
  model, codec, data = recipe_data(checkpoint, cache_dir, scenes, scene_seed)
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
      decoded = dict(pred=codec.decode(pred[j]), render=videos[j]["render"],
                     codec_ceiling=codec.decode(latents[i]["target_latent"]))
      rows.append(dict(demo.score_pair(
          f"{i:02d}", target=videos[j]["target"], no_condition=codec.decode(blind[j]),
          copy_source=videos[j]["source"], mean_image=codec.decode(np.zeros_like(pred[j])),
          **decoded), **ssim_split(videos[j]["holes"], videos[j]["target"], decoded)))
    per_draw.append(rows)
    if camera and draw == 0:
      examples = [dict(name=f"{i:02d}", **videos[j], **{k: pixels[i][k] for k in (
          "target_w2c", "source_depth", "source_w2c", "intrinsics")})
                  for j, i in enumerate(chosen)]
      cameras = demo.camera_rows(examples, [codec.decode(p) for p in pred],
                                 [codec.decode(b) for b in blind])
  rows = [dict(demo.mean_scores(list(same)), pair=same[0]["pair"]) for same in zip(*per_draw)]
  if camera:
    rows = [dict(row, **cam) for row, cam in zip(rows, cameras)]
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", default=os.path.join(
      _REPO, "postcam_jax", "assets", "demo_postcam.safetensors"),
                      help="a demo checkpoint (default: the shipped one); its recipe is read "
                           "from the sidecar JSON beside it")
  parser.add_argument("--pairs", type=int, default=0, help="first N pairs; 0: all")
  parser.add_argument("--sample_steps", type=int, default=25,
                      help="Euler steps of the sampler (the demo's 25; the release's 50)")
  parser.add_argument("--draws", type=int, default=1,
                      help="noises per pair (scores averaged): the gap of one draw is noisy")
  parser.add_argument("--scenes", type=int, default=0,
                      help="held-out scenes to score (all their ordered camera pairs); 0: the "
                           "recipe's data.num_eval_scenes")
  parser.add_argument("--codec_channels", default="",
                      help="comma-separated codec widths (e.g. 16,48,96): also print the SSIM of "
                           "the validation targets through a PCA codec of each width, fitted "
                           "like the recipe's, overall and where the warp fills them")
  parser.add_argument("--scene_seed", type=int, default=None,
                      help="generator seed of those scenes (default: the recipe's, data.seed + "
                           "1000); one seed for checkpoints of several data seeds scores them "
                           "on the same scenes")
  parser.add_argument("--camera", action="store_true",
                      help="also find each video's cameras (the source's exact depth, "
                           "evaluation.alignment) and print the demo's camera table")
  args = parser.parse_args()
  if args.draws < 1 or args.sample_steps < 1 or args.scenes < 0:
    parser.error("--draws and --sample_steps must be at least 1, --scenes at least 0")
  try:
    channels = [int(c) for c in args.codec_channels.split(",") if c.strip()]
    if any(c < 1 for c in channels):
      raise ValueError
  except ValueError:
    parser.error(f"--codec_channels takes positive whole numbers separated by commas; got "
                 f"{args.codec_channels!r}")
  ceilings = []
  try:
    with tempfile.TemporaryDirectory() as cache_dir:
      rows = score_validation(args.checkpoint, args.pairs, args.sample_steps, cache_dir,
                              args.draws, args.scenes, args.scene_seed, args.camera)
      if channels:
        _, _, data = recipe_data(args.checkpoint, cache_dir, args.scenes, args.scene_seed)
        ceilings = ceiling_by_channels(data, channels)
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
  print(split_line(rows))
  if args.camera:
    keys = [f"{v}_{m}" for v, _ in demo.CAMERA_VIDEOS
            for m in ("rot_err", "trans_err", "cam_mc", "place_deg", "place_m")]
    print("Camera accuracy against the requested target path (first noise draw; cameras found "
          "from the source's exact depth, evaluation.alignment; deg / m: where they are):")
    print("\n".join(demo.camera_table(rows, {k: float(np.mean([r[k] for r in rows]))
                                             for k in keys})))
    print(demo.camera_summary_line(rows))
  if ceilings:
    print("The validation targets through a PCA codec of each width (what sharpness a model "
          "could reach with it):")
    print("\n".join(ceilings))


if __name__ == "__main__":
  main()
