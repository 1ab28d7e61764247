"""ArrayRecord records and the Grain pipeline: shapes, determinism, sharding, resume."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from postcam_jax.data import arrayrecord, pipeline, synthetic
from postcam_jax.inference import inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = dict(num_scenes=2, num_cameras=4, num_frames=9, height=32, width=48, seed=11)
NUM_RECORDS = 2 * 4 * 3  # scenes x ordered camera pairs x one window


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  base = tmp_path_factory.mktemp("pipe")
  gen = synthetic.GeneratorConfig(root=str(base / "mc"), **GEN)
  synthetic.generate(gen)
  config = arrayrecord.PairsConfig(name="tiny", root=gen.root, clip_frames=9, height=32,
                                   width=48)
  arrayrecord.prepare(config, str(base / "records"), num_shards=2)
  return arrayrecord.prepared_dir(str(base / "records"), "tiny")


def _config(path, **kw):
  args = dict(data_dir=path, batch_size=4, num_frames=5, height=16, width=32, seed=3)
  args.update(kw)
  return pipeline.DataConfig(**args)


def _take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def _ids(batch):
  return [tuple(x) for x in zip(batch["scene"], batch["source_camera"], batch["target_camera"],
                                batch["start"].tolist())]


def test_records_read_back_tf_free(records):
  source = arrayrecord.data_source(records)
  assert len(source) == NUM_RECORDS
  ex = source[0]
  assert ex["target_video"].shape == (9, 32, 48, 3) and ex["target_video"].dtype == np.uint8
  assert ex["source_depth"].shape == (9, 32, 48) and ex["camera"].shape == (11, 12)
  np.testing.assert_allclose(ex["source_w2c"][0], np.eye(4), atol=1e-6)
  assert "tensorflow" not in sys.modules


def test_batch_shapes_and_dtypes(records):
  batch = _take(pipeline.make_dataset(_config(records), 0, 1), 1)[0]
  expect = {"target_video": ((4, 5, 16, 32, 3), np.float32),
            "source_video": ((4, 5, 16, 32, 3), np.float32),
            "source_depth": ((4, 5, 16, 32), np.float32),
            "source_w2c": ((4, 5, 4, 4), np.float32), "target_w2c": ((4, 5, 4, 4), np.float32),
            "intrinsics": ((4, 3, 3), np.float32), "camera": ((4, 11, 12), np.float32),
            "has_depth": ((4,), np.int32), "start": ((4,), np.int32)}
  for key, (shape, dtype) in expect.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, key
  assert batch["caption"].shape == (4,) and batch["caption"][0].startswith("A figure")
  assert -1.0 <= batch["target_video"].min() < batch["target_video"].max() <= 1.0
  # 9 -> 5 frames by the release's rule (0, 2, 4, 6, 8); the camera follows the resampled poses.
  np.testing.assert_allclose(batch["camera"][:, 0], batch["target_w2c"][:, 0, :3].reshape(4, 12))
  # 32x48 -> resize to 21x32 (cover 16x32), crop 2.5 rows: K scaled by 2/3 and shifted by the
  # unrounded crop offset, the principal point first at the centre (the release's resize_crop).
  np.testing.assert_allclose(batch["intrinsics"][0, 0, 2], 24 * 32 / 48, rtol=1e-6)
  np.testing.assert_allclose(batch["intrinsics"][0, 1, 2], 16 * 32 / 48 - 2.5, rtol=1e-6)


def test_same_seed_same_batches_other_seed_differs(records):
  a = _take(pipeline.make_dataset(_config(records), 0, 1), 3)
  b = _take(pipeline.make_dataset(_config(records), 0, 1), 3)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  c = _take(pipeline.make_dataset(_config(records, seed=4), 0, 1), 3)
  assert [_ids(x) for x in a] != [_ids(x) for x in c]


def test_process_shards_are_disjoint_and_cover_the_epoch(records):
  seen = []
  for index in range(3):
    config = _config(records, batch_size=3, num_epochs=1)
    shard = [i for batch in pipeline.make_dataset(config, index, 3) for i in _ids(batch)]
    assert len(shard) == NUM_RECORDS // 3
    seen.append(set(shard))
  assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
  assert len(seen[0] | seen[1] | seen[2]) == NUM_RECORDS
  with pytest.raises(ValueError, match="must divide over 3 processes"):
    pipeline.make_dataset(_config(records, batch_size=4), 0, 3)


def test_records_frames_and_intrinsics_equal_the_samplers(tmp_path):
  """One resize/crop/K path: a record prepared at a smaller size holds exactly the sampler's
  frames (rounded to uint8) and the sampler's K for the same video and depth."""
  gen = synthetic.GeneratorConfig(root=str(tmp_path / "mc"), num_scenes=1, num_cameras=2,
                                  num_frames=9, height=36, width=60, seed=5)
  synthetic.generate(gen)
  config = arrayrecord.PairsConfig(name="small", root=gen.root, clip_frames=9, height=16,
                                   width=32)
  arrayrecord.prepare(config, str(tmp_path / "records"), num_shards=1)
  source = arrayrecord.data_source(arrayrecord.prepared_dir(str(tmp_path / "records"), "small"))
  record = source[0]
  text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
  scene = os.path.join(gen.root, "train", text(record["scene"]))
  cam = text(record["source_camera"])
  sampler = inputs.load_release_inputs(
      os.path.join(scene, "videos", f"{cam}.mp4"), os.path.join(scene, "depth", f"{cam}.npz"),
      "y_left_30", sample_hw=(16, 32), num_frames=9)
  frames01 = sampler.frames * np.float32(0.5) + np.float32(0.5)  # the sampler's [-1, 1] -> [0, 1]
  expected = np.clip(np.rint(frames01 * np.float32(255.0)), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(record["source_video"], expected)
  np.testing.assert_array_equal(record["intrinsics"], sampler.intrinsics[0])
  np.testing.assert_allclose(record["source_depth"] * np.float32(sampler.scale), sampler.depth,
                             rtol=1e-6)


def test_global_batch_on_eight_devices(records):
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip(f"needs 8 devices (conftest's XLA_FLAGS), found {len(devices)}")
  mesh = jax.sharding.Mesh(np.array(devices[:8]), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = _take(pipeline.make_dataset(_config(records, batch_size=8), 0, 1), 1)[0]
  global_batch = pipeline.make_global_batch(batch, sharding)
  assert global_batch["target_video"].shape == (8, 5, 16, 32, 3)
  assert global_batch["target_video"].sharding.spec == jax.sharding.PartitionSpec("data")
  np.testing.assert_array_equal(np.asarray(global_batch["camera"]), batch["camera"])
  assert isinstance(global_batch["caption"], np.ndarray)


_RESUME = textwrap.dedent("""
    import sys
    import numpy as np
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    from postcam_jax.data import pipeline
    path, ckpt, out, workers = sys.argv[1:5]
    config = pipeline.DataConfig(data_dir=path, batch_size=4, num_frames=5, height=16, width=32,
                                 seed=3, worker_count=int(workers))
    it = iter(pipeline.make_dataset(config, 0, 1))
    pipeline.restore_iterator(ckpt, it)
    batch = next(it)
    np.savez(out, **{k: v for k, v in batch.items() if v.dtype.kind in "biuf"})
""")


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_a_fresh_process_gives_the_next_batch(records, tmp_path, workers):
  k = 3
  config = _config(records, worker_count=workers)
  uninterrupted = _take(pipeline.make_dataset(config, 0, 1), k + 1)
  it = iter(pipeline.make_dataset(config, 0, 1))
  for _ in range(k):
    next(it)
  pipeline.save_iterator(str(tmp_path / "ckpt"), k, it)
  out = tmp_path / "next.npz"
  subprocess.run([sys.executable, "-c", _RESUME, records, str(tmp_path / "ckpt"), str(out),
                  str(workers)], check=True, cwd=REPO, timeout=120)
  resumed = np.load(out)
  for key in resumed.files:
    np.testing.assert_array_equal(resumed[key], uninterrupted[k][key], err_msg=key)


def test_latent_records_are_a_small_addition(records, tmp_path):
  """A latent record kind with toy encoders (4x spatial, 2x temporal pooling) reads back."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(records))))

  def encoder(video):  # [T, H, W, 3] in [-1, 1] -> [F, h, w, 16]
    t, h, w, _ = video.shape
    pooled = video[::2].reshape(-1, h // 4, 4, w // 4, 4, 3).mean(axis=(2, 4))
    return np.concatenate([pooled] * 5 + [pooled[..., :1]], axis=-1)

  encoders = arrayrecord.LatentEncoders(
      encoder=encoder, latent_shape=(5, 8, 12, 16),
      text_encoder=lambda text: np.full((4, 8), len(text), np.float32), text_shape=(4, 8),
      renderer=lambda ex: ex["source_video"], render_latent_shape=(5, 8, 12, 16))
  config = arrayrecord.PairsConfig(name="latent", root=os.path.join(root, "mc"), clip_frames=9,
                                   height=32, width=48, pairs_per_scene=2, encoders=encoders)
  arrayrecord.prepare(config, str(tmp_path))
  path = arrayrecord.prepared_dir(str(tmp_path), "latent")
  ex = arrayrecord.data_source(path)[0]
  assert "target_video" not in ex and ex["target_latent"].shape == (5, 8, 12, 16)
  assert ex["text_embedding"].shape == (4, 8) and ex["render_latent"].dtype == np.float32
  batch = _take(pipeline.make_dataset(
      pipeline.DataConfig(data_dir=path, batch_size=2, num_frames=9, height=32, width=48), 0, 1),
      1)[0]
  assert batch["source_latent"].shape == (2, 5, 8, 12, 16) and batch["camera"].shape == (2, 11, 12)
