"""How much of a target view the warped source covers, per camera layout of the generated scenes.

  python benchmarks/render_coverage.py [--layouts 360:0,45:0,45:7] [--scenes 2]

A layout is ``SPREAD:DISTANCE``: ``data.camera_spread_deg`` (the azimuth sector the cameras start
in; 360 = anywhere around the figure, the dataset's way) and ``data.camera_distance_m`` (0 = 3, 5,
7 or 10 m at random, the dataset's way). For every ordered (source, target) pair of ``--scenes``
held-out scenes of the demo's size (64x96, 9 frames, 4 cameras) it warps the source to the target
cameras with its exact depth (``geometry.render.forward_warp``, the release's warp) and prints the
mean over pairs of: the fraction of target pixels the warp fills, the PSNR (dB, videos in [-1, 1])
against the true target of the render alone (black holes), of the render with its holes filled by
the source's mean colour (what a model that copies the render and blurs the rest could reach),
and of a flat image of the source's mean colour. These are the data-side ceilings behind the demo
recipe's camera layout (docs/experiments.md, issue 23).
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import common  # noqa: E402
from postcam_jax.evaluation import fidelity  # noqa: E402
from postcam_jax.geometry import render  # noqa: E402
from postcam_jax.training import data as train_data  # noqa: E402


def layout_row(spread: float, distance: float, scenes: int, cache_dir: str) -> dict:
  data = common.data_synthetic(batch_size=1, num_scenes=1, num_eval_scenes=scenes, num_cameras=4,
                               num_frames=9, height=64, width=96, cache_dir=cache_dir,
                               camera_spread_deg=spread, camera_distance_m=distance)
  rows = []
  for pair in train_data.pixel_examples(data, "eval"):
    source = pair["source_video"].astype(np.float32) / 127.5 - 1.0
    target = pair["target_video"].astype(np.float32) / 127.5 - 1.0
    warped, holes = render.forward_warp(source, pair["source_depth"], pair["source_w2c"],
                                        pair["target_w2c"], pair["intrinsics"])
    warped, holes = np.asarray(warped), np.asarray(holes)
    mean_colour = source.mean(axis=(0, 1, 2))
    filled = np.where(holes[..., None], mean_colour, warped)
    rows.append({"covered": 1.0 - holes.mean(),
                 "render": fidelity.psnr(warped, target, peak=2.0),
                 "render_mean_fill": fidelity.psnr(filled, target, peak=2.0),
                 "flat_mean": fidelity.psnr(np.broadcast_to(mean_colour, target.shape), target,
                                            peak=2.0)})
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"pairs": len(rows)}


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layouts", default="360:0,90:0,45:0,45:5,45:7,20:7",
                 help="comma-separated SPREAD_DEG:DISTANCE_M (0 m: the dataset's 3-10 m)")
  p.add_argument("--scenes", type=int, default=2, help="held-out scenes (4 cameras each)")
  p.add_argument("--cache-dir", default="", help="where scenes are generated (default: a temp dir)")
  args = p.parse_args()
  cache = args.cache_dir or tempfile.mkdtemp(prefix="render_coverage_")
  print(f"{'layout':>16} {'pairs':>6} {'covered':>8} {'render':>8} {'render+mean':>12} "
        f"{'flat mean':>10}   (PSNR dB against the true target)")
  for text in args.layouts.split(","):
    spread, distance = (float(x) for x in text.split(":"))
    row = layout_row(spread, distance, args.scenes, cache)
    name = f"{spread:g} deg, " + (f"{distance:g} m" if distance else "3-10 m")
    print(f"{name:>16} {row['pairs']:>6} {row['covered']:>8.2f} {row['render']:>8.2f} "
          f"{row['render_mean_fill']:>12.2f} {row['flat_mean']:>10.2f}", flush=True)


if __name__ == "__main__":
  main()
