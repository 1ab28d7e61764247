"""The trainer on prepared latent ArrayRecords: a train and a test split prepared at once (TFDS
builder and the prepare CLI), a few steps of the tiny PostCam with one evaluation on the test
split, and the evaluation reading only the batches it uses."""

import os

import numpy as np
import pytest

from configs import common, postcam_tiny
from postcam_jax import training
from postcam_jax.data import arrayrecord, prepare, synthetic
from postcam_jax.data import records as records_lib
from postcam_jax.training import data as train_data
from postcam_jax.training import metrics

H, W, T = 64, 96, 9
SCENES = {"train": 2, "test": 1}
PAIRS_PER_SCENE = 3  # the test split then has 3 records, one more than its evaluation batch


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
  """Generated MultiCamVideo-layout scenes: <root>/train (2 scenes) and <root>/test (1 other)."""
  root = str(tmp_path_factory.mktemp("multicam"))
  for split, n in SCENES.items():
    synthetic.generate(synthetic.GeneratorConfig(
        root=root, split=split, num_scenes=n, num_cameras=3, num_frames=T, height=H, width=W,
        seed=7 if split == "train" else 8, crf=0))
  return root


def stand_in_encoders(data) -> arrayrecord.LatentEncoders:
  """The trainer tests' stand-ins (``train_data``): patch-projection VAE, hashed words as text
  states, the release's forward-warp render."""
  encoder = train_data.PatchEncoder(data.latent_channels, seed=0)
  return arrayrecord.LatentEncoders(
      encoder=encoder, latent_shape=encoder.latent_shape(T, H, W),
      text_encoder=train_data.HashTextEncoder(data.text_len, data.text_dim, seed=0),
      text_shape=(data.text_len, data.text_dim), renderer=train_data.release_render,
      render_latent_shape=encoder.latent_shape(T, H // 4, W // 4))


@pytest.fixture(scope="module")
def records(scenes, tmp_path_factory):
  data = postcam_tiny.get_config().data
  data_dir = str(tmp_path_factory.mktemp("records"))
  config = arrayrecord.PairsConfig(name="latent", root=scenes, splits=("train", "test"),
                                   clip_frames=T, height=H, width=W,
                                   pairs_per_scene=PAIRS_PER_SCENE,
                                   encoders=stand_in_encoders(data))
  builder = arrayrecord.prepare(config, data_dir)
  return data_dir, builder


def test_one_preparation_writes_both_splits(records):
  data_dir, builder = records
  assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {
      "train": PAIRS_PER_SCENE * SCENES["train"], "test": PAIRS_PER_SCENE * SCENES["test"]}
  path = arrayrecord.prepared_dir(data_dir, "latent")
  train_ids = {ex["scene"] for ex in arrayrecord.data_source(path, "train")}
  test_ids = {ex["scene"] for ex in arrayrecord.data_source(path, "test")}
  assert len(train_ids) == 2 and len(test_ids) == 1
  ex = arrayrecord.data_source(path, "test")[0]
  assert ex["target_latent"].shape == (3, 8, 12, 16) and ex["render_latent"].shape == (3, 2, 3, 16)
  # Asking the same prepared directory for another root or splits is an error naming both, not
  # a silent reuse.
  missing = arrayrecord.PairsConfig(name="latent", root="/nonexistent", splits=("train", "val"),
                                    clip_frames=T, height=H, width=W,
                                    pairs_per_scene=PAIRS_PER_SCENE,
                                    encoders=builder.builder_config.encoders)
  with pytest.raises(records_lib.PreparedDirError,
                     match=r"other settings: root: '.*' -> '/nonexistent'; splits: \['train', "
                           r"'test'\] -> \['train', 'val'\]\. .*--overwrite"):
    arrayrecord.prepare(missing, data_dir)


def test_prepare_cli_writes_every_split(scenes, tmp_path, capsys):
  code = prepare.main(["--root", scenes, "--data_dir", str(tmp_path), "--name", "pix",
                       "--splits", "train,test", "--clip_frames", "5", "--height", "32",
                       "--width", "48", "--pairs_per_scene", "1"])
  assert code == 0
  out = capsys.readouterr().out
  assert "train: 2 records" in out and "test: 1 records" in out
  path = arrayrecord.prepared_dir(str(tmp_path), "pix")
  assert len(arrayrecord.data_source(path, "test")) == 1


def arrayrecord_config(data_dir):
  config = postcam_tiny.get_config()
  tiny = config.data
  config.data = common.data_arrayrecord(
      batch_size=2, num_frames=T, height=H, width=W, text_len=tiny.text_len,
      data_dir=arrayrecord.prepared_dir(data_dir, "latent"), eval_split="test")
  config.schedule, config.stage_steps = "one_stage", (3,)  # joint: camera and render
  config.mesh_devices, config.log_every = 1, 1
  config.checkpoint.every = 3
  config.eval.update(dict(every=3, num_batches=1, zero_camera_baseline=False))
  return config


class CountingSource:
  """A data source that records which indices were read."""

  def __init__(self, source):
    self.source, self.read = source, set()

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    self.read.add(index)
    return self.source[index]


def test_trains_and_evaluates_from_latent_records(records, tmp_path, monkeypatch):
  data_dir, _ = records
  config = arrayrecord_config(data_dir)
  opened = {}
  real = arrayrecord.data_source

  def counting(path, split="train"):
    source = CountingSource(real(path, split))
    opened.setdefault(split, []).append(source)
    return source

  monkeypatch.setattr(arrayrecord, "data_source", counting)
  result = training.train_and_evaluate(config, str(tmp_path))
  assert result.step == 3
  losses = [r["train/loss"] for r in metrics.read_jsonl(str(tmp_path)) if "train/grad_norm" in r]
  assert len(losses) == 3 and np.all(np.isfinite(losses))
  assert np.isfinite(result.metrics["val/loss"])
  assert set(result.metrics) >= {f"val/loss_sigma{s:g}" for s in config.eval.sigmas}
  # The evaluation read the test split, and only its one batch of 2 (not the whole split of 3).
  test_reads = set().union(*(s.read for s in opened["test"]))
  assert len(opened["test"][0]) == PAIRS_PER_SCENE * SCENES["test"] > 2
  assert test_reads == {0, 1}
  # Its batch is the test split's first two records.
  batch = train_data.eval_batches(config, 0, 1)
  source = real(config.data.data_dir, "test")
  assert len(batch) == 1
  np.testing.assert_array_equal(batch[0]["target_latent"],
                                np.stack([source[i]["target_latent"] for i in (0, 1)]))
  assert os.path.isdir(tmp_path / "checkpoints" / "3")


def test_latent_records_of_another_clip_length_are_refused(records, tmp_path):
  data_dir, _ = records
  config = arrayrecord_config(data_dir)
  config.data.num_frames = 5
  with pytest.raises(ValueError, match="clips of 9 frames; set --config.data.num_frames=9"):
    training.train_and_evaluate(config, str(tmp_path))
