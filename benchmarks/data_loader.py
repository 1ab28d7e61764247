"""Samples/s of the Grain pipeline over pixel records, at the tiny and the paper resolution.

  python benchmarks/data_loader.py --workdir /tmp/bench_data [--configs tiny,paper]
      [--workers 0,2]

For each configuration it generates synthetic scenes (``postcam_jax.data.synthetic``), prepares
pixel records (``arrayrecord.prepare``) once, then times ``pipeline.make_dataset`` with batch 1
(one sample per batch) after two warm-up batches. ``paper`` renders 240x416 frames and prepares
records at 480x832x41 (the upsampling happens at preparation, not in the timed loop), so what is
timed is the loader: read + decode a 41-frame record pair with depth, resample, normalise,
camera tokens, batch, and (with workers) the transfer from the worker processes.
"""

import argparse
import os
import time

from absl import flags

from postcam_jax.data import arrayrecord, pipeline, synthetic

CONFIGS = {
    # name: generator settings, record settings (clip T, H, W), samples to time
    "tiny": (dict(num_scenes=2, num_cameras=4, num_frames=17, height=64, width=96),
             (17, 64, 96), 200),
    "paper": (dict(num_scenes=1, num_cameras=3, num_frames=41, height=240, width=416,
                   supersample=1), (41, 480, 832), 12),
}


def prepare_records(workdir: str, name: str) -> str:
  gen_args, (t, h, w), _ = CONFIGS[name]
  path = arrayrecord.prepared_dir(os.path.join(workdir, "records"), name)
  if os.path.isdir(path):
    return path
  gen = synthetic.GeneratorConfig(root=os.path.join(workdir, f"mc_{name}"), **gen_args)
  start = time.time()
  synthetic.generate(gen)
  print(f"[{name}] generated in {time.time() - start:.1f} s")
  start = time.time()
  arrayrecord.prepare(arrayrecord.PairsConfig(name=name, root=gen.root, clip_frames=t, height=h,
                                              width=w), os.path.join(workdir, "records"))
  print(f"[{name}] prepared in {time.time() - start:.1f} s")
  return path


def time_loader(path: str, name: str, workers: int) -> float:
  _, (t, h, w), samples = CONFIGS[name]
  config = pipeline.DataConfig(data_dir=path, batch_size=1, num_frames=t, height=h, width=w,
                               worker_count=workers, worker_buffer_size=1)
  it = iter(pipeline.make_dataset(config, 0, 1))
  for _ in range(2):
    next(it)
  start = time.time()
  for _ in range(samples):
    next(it)
  return samples / (time.time() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--workdir", default="/tmp/bench_data")
  parser.add_argument("--configs", default="tiny,paper")
  parser.add_argument("--workers", default="0,2")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags
  for name in args.configs.split(","):
    path = prepare_records(args.workdir, name)
    _, (t, h, w), _ = CONFIGS[name]
    for workers in (int(x) for x in args.workers.split(",")):
      rate = time_loader(path, name, workers)
      print(f"[{name}] T={t} {h}x{w} workers={workers}: {rate:.2f} samples/s")


if __name__ == "__main__":
  main()
