"""CLI: a MultiCamVideo-layout directory -> sharded ArrayRecord pixel records (TFDS builder).

Example (generated data: train and held-out test scenes, every pair, clips of 17 frames at
48x64)::

  python -m postcam_jax.data.synthetic --root /tmp/multicam
  python -m postcam_jax.data.synthetic --root /tmp/multicam --split test --seed 1
  python -m postcam_jax.data.prepare --root /tmp/multicam --data_dir /tmp/records \\
      --name tiny --splits train,test --clip_frames 17 --height 48 --width 64

Every split of ``--splits`` (``<root>/<split>/``) is written in one go, as one TFDS split each:
the trainer reads ``data.split`` and evaluates on ``data.eval_split`` of the same directory. A
prepared directory is reused as is, so asking later for a split it lacks is an error (use a new
``--name``). The records land in ``<data_dir>/multi_cam_pairs/<name>/1.0.0`` (printed at the
end), the directory the Grain pipeline's ``data_dir`` names. Latent records (what the trainer
reads) are built from Python with ``arrayrecord.PairsConfig(encoders=LatentEncoders(...))``.
"""

import argparse
import sys

from postcam_jax.data import arrayrecord


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--root", required=True, help="dataset root holding <split>/<group>/...")
  parser.add_argument("--data_dir", required=True, help="where the TFDS dataset is written")
  parser.add_argument("--name", default="pixels", help="builder config name (a subdirectory)")
  parser.add_argument("--splits", default="train",
                      help="comma-separated source splits (<root>/<split>/), one TFDS split each")
  parser.add_argument("--clip_frames", type=int, default=17)
  parser.add_argument("--stride", type=int, default=1, help="frame step inside a clip")
  parser.add_argument("--window_step", type=int, default=None,
                      help="frames between clip starts (default: the clip span, no overlap)")
  parser.add_argument("--height", type=int, default=64)
  parser.add_argument("--width", type=int, default=96)
  parser.add_argument("--pairs_per_scene", type=int, default=None,
                      help="sample this many pairs per scene (default: every pair)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--on_error", choices=("raise", "skip"), default="raise")
  parser.add_argument("--num_cameras", type=int, default=None,
                      help="expected cameras per scene (the real dataset has 10)")
  parser.add_argument("--num_shards", type=int, default=None)
  args = parser.parse_args(argv)
  config = arrayrecord.PairsConfig(
      name=args.name, root=args.root, splits=tuple(s.strip() for s in args.splits.split(",")),
      clip_frames=args.clip_frames,
      stride=args.stride, window_step=args.window_step, height=args.height, width=args.width,
      pairs_per_scene=args.pairs_per_scene, seed=args.seed, on_error=args.on_error,
      num_cameras=args.num_cameras)
  builder = arrayrecord.prepare(config, args.data_dir, num_shards=args.num_shards)
  for name in config.splits:
    split = builder.info.splits[name]
    print(f"{name}: {split.num_examples} records in {split.num_shards} shard(s)")
  print(f"{len(builder.skipped)} bad input(s) skipped: "
        f"{arrayrecord.prepared_dir(args.data_dir, args.name)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
