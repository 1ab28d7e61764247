"""CLI: a MultiCamVideo-layout root -> ArrayRecord records (TFDS): latent records for training,
or pixel records.

Latent records, what the trainer reads (``--latents``): target and source latents of the
converted Wan-VAE (normalised, bf16), the target caption's umT5 states (bf16, without padding),
the camera (RT tokens; target poses and K for the Plucker input) and the stage-2 render latent
(the source clip warped to the target camera by the release's renderer, 4x down, VAE-encoded);
the scene's exact depth where it has one, else Depth Anything 3 scaled to the dataset's poses
(``--depth-model``). Each video and caption is encoded once, only the render per pair. For the
paper's clips (41 of 81 frames at 480x832)::

  python -m postcam_jax.data.prepare --latents --root MultiCamVideo-Dataset --data_dir data \\
      --name paper --splits train,test --clip_frames 41 --stride 2 --height 480 --width 832 \\
      --vae ckpt/vae --text-encoder ckpt/t5 --depth-model ckpt/da3 --on_error skip

On several processes run the same command on each (``launch/tpu_pod.sh``,
``launch/slurm_gpu.sbatch``, ``python launch/local.py -n 2 -d 4 -- -m postcam_jax.data.prepare
...``, or ``--coordinator H:P --num-processes N --process-id I``): each encodes its own slice of
the scenes on its own devices and writes its own shards; ``--data_dir`` must be a filesystem all
of them see. A killed job rerun with the same command finishes the same dataset, redoing only
unfinished shards. Generated data (``python -m postcam_jax.data.synthetic``) works the same way
and has exact depth.

Pixel records (without ``--latents``): uint8 clips, float32 depth, cameras, caption and ids, one
process (a TFDS builder); for checks and the pipeline's own tests::

  python -m postcam_jax.data.prepare --root /tmp/multicam --data_dir /tmp/records \\
      --name tiny --splits train,test --clip_frames 17 --height 48 --width 64

Either kind lands in ``<data_dir>/multi_cam_pairs/<name>/1.0.0`` (printed at the end), the
directory ``--config.data.data_dir`` names. A directory prepared before from another root or with
other settings is refused, naming what differs; ``--overwrite`` rebuilds it.
"""

import argparse
import sys

from postcam_jax.data import arrayrecord, latent_job, latents, multicam, records
from postcam_jax.io import model_dir, video
from postcam_jax.parallel import distributed

HELP = {
    "latents": "write latent records (what the trainer reads) with the models below; without it, "
               "pixel records",
    "vae": "converted Wan-VAE directory (tools/convert_weights.py vae)",
    "text_encoder": "converted umT5 directory with its tokenizer (tools/convert_weights.py t5)",
    "depth_model": "converted Depth Anything 3 directory (tools/convert_weights.py da3): depth of "
                   "videos without a depth file, scaled to the dataset's poses",
    "scenes_per_shard": "scenes per record shard: the unit of work, of resumption and of "
                        "distribution over processes",
    "batch_per_device": "videos per device in one VAE / text-encoder call",
    "vae_dtype": "VAE parameters and compute (Wan runs it in float32)",
    "overwrite": "rebuild a directory prepared before with other settings",
    "no_progress": "no progress bar",
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m postcam_jax.data.prepare", description=__doc__.split("\n\n")[0],
      epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", required=True, help="dataset root holding <split>/<group>/...")
  parser.add_argument("--data_dir", required=True, help="where the TFDS dataset is written")
  parser.add_argument("--name", default=None,
                      help="builder config name, a subdirectory (default: latents or pixels)")
  parser.add_argument("--splits", default="train",
                      help="comma-separated source splits (<root>/<split>/), one TFDS split each")
  parser.add_argument("--clip_frames", type=int, default=17, help="frames per clip (4k + 1)")
  parser.add_argument("--stride", type=int, default=1, help="frame step inside a clip")
  parser.add_argument("--window_step", type=int, default=None,
                      help="frames between clip starts (default: the clip span, no overlap)")
  parser.add_argument("--height", type=int, default=64)
  parser.add_argument("--width", type=int, default=96)
  parser.add_argument("--pairs_per_scene", type=int, default=None,
                      help="this many pairs per scene (default: every ordered pair and window)")
  parser.add_argument("--seed", type=int, default=0, help="seed of --pairs_per_scene")
  parser.add_argument("--on_error", choices=("raise", "skip"), default="raise",
                      help="a bad scene stops the job (raise) or is skipped and listed (skip)")
  parser.add_argument("--num_cameras", type=int, default=None,
                      help="expected cameras per scene (the real dataset has 10)")
  parser.add_argument("--overwrite", action="store_true", help=HELP["overwrite"])
  group = parser.add_argument_group("latent records")
  group.add_argument("--latents", action="store_true", help=HELP["latents"])
  group.add_argument("--vae", default=None, help=HELP["vae"])
  group.add_argument("--text-encoder", "--text_encoder", dest="text_encoder", default=None,
                     help=HELP["text_encoder"])
  group.add_argument("--depth-model", "--depth_model", dest="depth_model", default=None,
                     help=HELP["depth_model"])
  group.add_argument("--depth_process_res", type=int, default=504,
                     help="Depth Anything 3's processing resolution (the release's 504)")
  group.add_argument("--host_threads", type=int, default=0,
                     help="threads decoding and resizing videos, the next scene's while the "
                          "devices encode this one (0: min(32, CPU count); a 1280x1280 video "
                          "costs ~6 CPU-seconds)")
  group.add_argument("--scenes_per_shard", type=int, default=4, help=HELP["scenes_per_shard"])
  group.add_argument("--batch_per_device", type=int, default=1, help=HELP["batch_per_device"])
  group.add_argument("--vae_dtype", choices=("float32", "bfloat16"), default="float32",
                     help=HELP["vae_dtype"])
  group.add_argument("--no-progress", "--no_progress", dest="progress", action="store_false",
                     help=HELP["no_progress"])
  pixel = parser.add_argument_group("pixel records")
  pixel.add_argument("--num_shards", type=int, default=None, help="shards per split")
  distributed.add_arguments(parser)
  return parser


def _splits(text: str) -> tuple[str, ...]:
  return tuple(s.strip() for s in text.split(",") if s.strip())


def run_latents(args) -> int:
  if not args.vae or not args.text_encoder:
    raise latents.SettingsError("--latents needs --vae DIR and --text-encoder DIR (converted "
                                "models)")
  distributed.initialize_from_args(args)
  config = latents.LatentConfig(
      root=args.root, data_dir=args.data_dir, vae=args.vae, text_encoder=args.text_encoder,
      depth_model=args.depth_model, name=args.name or "latents", splits=_splits(args.splits),
      clip_frames=args.clip_frames, stride=args.stride, window_step=args.window_step,
      height=args.height, width=args.width, pairs_per_scene=args.pairs_per_scene,
      seed=args.seed, num_cameras=args.num_cameras, scenes_per_shard=args.scenes_per_shard,
      on_error=args.on_error, vae_dtype=args.vae_dtype, batch_per_device=args.batch_per_device,
      depth_process_res=args.depth_process_res, host_threads=args.host_threads,
      overwrite=args.overwrite,
      progress=args.progress)
  summary = latent_job.run(config)
  print("\n".join(summary.lines()))
  return 0


def run_pixels(args) -> int:
  for flag, value in (("--vae", args.vae), ("--text-encoder", args.text_encoder),
                      ("--depth-model", args.depth_model)):
    if value:
      raise latents.SettingsError(f"{flag} is for latent records; add --latents")
  if any(v is not None for v in (args.coordinator, args.num_processes, args.process_id)):
    raise latents.SettingsError("pixel records are prepared by one process; several processes "
                                "prepare latent records (--latents)")
  name = args.name or "pixels"
  config = arrayrecord.PairsConfig(
      name=name, root=args.root, splits=_splits(args.splits), clip_frames=args.clip_frames,
      stride=args.stride, window_step=args.window_step, height=args.height, width=args.width,
      pairs_per_scene=args.pairs_per_scene, seed=args.seed, on_error=args.on_error,
      num_cameras=args.num_cameras)
  builder = arrayrecord.prepare(config, args.data_dir, num_shards=args.num_shards,
                                overwrite=args.overwrite)
  for split_name in config.splits:
    split = builder.info.splits[split_name]
    print(f"{split_name}: {split.num_examples} records in {split.num_shards} shard(s)")
  print(f"{len(builder.skipped)} bad input(s) skipped: "
        f"{arrayrecord.prepared_dir(args.data_dir, name)}")
  return 0


# What a user can fix, said in one line (exit status 2); anything else keeps its traceback.
USER_ERRORS = (latents.SettingsError, latent_job.SceneError, records.PreparedDirError,
               multicam.DatasetError, video.VideoReadError, model_dir.ModelDirError)


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return run_latents(args) if args.latents else run_pixels(args)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
