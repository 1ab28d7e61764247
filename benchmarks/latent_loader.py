"""Samples/s per host of the trainer's input over latent records at the paper's size, against
what the best planned v5p:2x2x2 training step consumes.

  python benchmarks/latent_loader.py --workdir /tmp/bench_latent_loader [--records 96]
      [--batch 8] [--workers 0,2] [--text_tokens 128]

Writes ``--records`` latent records with exactly the features and shapes ``python -m
postcam_jax.data.prepare --latents`` writes for 41 x 480 x 832 clips (``records.latent_features``:
target/source latents [11, 60, 104, 16] and render [11, 15, 26, 16] bf16, text [L, 4096] bf16
without padding, cameras, K, ids), through the same shard writer and TFDS metadata
(``records.write_shard``, ``records.write_metadata``), filled with N(0, 1) values (bf16 noise
compresses about as little as real latents). Then it times what the trainer iterates:
``training.data.train_dataset`` of ``configs/postcam_1p3b.py`` (``tfds.data_source`` ->
Grain: shuffle, decode, text padded to 512, camera, batch, float32) with this host's batch, after
two warm-up batches. A v5p:2x2x2 slice is 2 hosts of 4 chips; its best planned step
(docs/performance.md: fsdp=8, dots_no_batch, accumulation 2) takes 6.570 s for a global batch of
16, so each host must deliver 8 samples per 6.570 s = 1.22 samples/s; the target is 4x that.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from configs import postcam_1p3b  # noqa: E402
from postcam_jax.data import records  # noqa: E402
from postcam_jax.geometry import cameras  # noqa: E402
from postcam_jax.training import data as train_data  # noqa: E402

T, H, W = 41, 480, 832
LATENT = (11, 60, 104, 16)
RENDER = (11, 15, 26, 16)
TEXT_DIM = 4096
STEP_SECONDS, GLOBAL_BATCH, HOSTS = 6.570, 16, 2  # best v5p:2x2x2 plan (docs/performance.md)


def write_records(directory: str, count: int, text_tokens: int, per_shard: int = 16):
  if os.path.isfile(os.path.join(directory, records.INFO_FILE)):
    return
  features = records.latent_features(T, LATENT, RENDER, TEXT_DIM)
  rng = np.random.default_rng(0)
  eye = np.tile(np.eye(4, dtype=np.float32), (T, 1, 1))
  shards = -(-count // per_shard)
  lengths, size = [], 0
  for s in range(shards):
    n = min(per_shard, count - s * per_shard)

    def examples(n=n, s=s):
      for i in range(n):
        yield features.serialize_example({
            "target_latent": rng.standard_normal(LATENT, np.float32).astype(records.BF16),
            "source_latent": rng.standard_normal(LATENT, np.float32).astype(records.BF16),
            "render_latent": rng.standard_normal(RENDER, np.float32).astype(records.BF16),
            "text_embedding": rng.standard_normal((text_tokens, TEXT_DIM),
                                                  np.float32).astype(records.BF16),
            "source_w2c": eye, "target_w2c": eye,
            "intrinsics": np.array([[500, 0, W / 2], [0, 500, H / 2], [0, 0, 1]], np.float32),
            "camera": np.zeros((cameras.NUM_CAMERA_TOKENS, 12), np.float32),
            "caption": "a caption", "scene": f"g/scene{s}", "source_camera": "cam01",
            "target_camera": f"cam{i:02d}", "start": np.int32(0), "stride": np.int32(2)})

    written, nbytes = records.write_shard(
        os.path.join(directory, records.shard_name("train", s, shards)), examples())
    lengths.append(written)
    size += nbytes
  records.write_metadata(directory, features, "bench", {"train": lengths}, {"train": size},
                         description="benchmark latent records (noise)")
  print(f"wrote {count} records, {size / 1e6:.0f} MB ({size / count / 1e6:.2f} MB per record)")


def time_loader(directory: str, batch: int, workers: int, samples: int) -> float:
  config = postcam_1p3b.get_config()
  config.data.data_dir = directory
  config.data.worker_count = workers
  config.data.eval_split = "train"
  it = iter(train_data.train_dataset(config, 0, HOSTS, batch_size=batch * HOSTS))
  for _ in range(2):
    next(it)
  start = time.perf_counter()
  for _ in range(samples // batch):
    out = next(it)
  elapsed = time.perf_counter() - start
  assert out["text_embedding"].shape == (batch, 512, TEXT_DIM), out["text_embedding"].shape
  return (samples // batch) * batch / elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="/tmp/bench_latent_loader")
  parser.add_argument("--records", type=int, default=96)
  parser.add_argument("--batch", type=int, default=GLOBAL_BATCH // HOSTS, help="per host")
  parser.add_argument("--workers", default="0,2")
  parser.add_argument("--text_tokens", type=int, default=128)
  parser.add_argument("--samples", type=int, default=64, help="samples timed per setting")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags
  directory = records.prepared_dir(args.workdir, "bench")
  write_records(directory, args.records, args.text_tokens)
  need = GLOBAL_BATCH / HOSTS / STEP_SECONDS
  for workers in (int(w) for w in args.workers.split(",")):
    rate = time_loader(directory, args.batch, workers, args.samples)
    print(f"workers={workers} batch={args.batch}: {rate:.2f} samples/s per host = "
          f"{rate / need:.1f}x the {need:.2f} samples/s per host one v5p:2x2x2 step consumes")


if __name__ == "__main__":
  main()
