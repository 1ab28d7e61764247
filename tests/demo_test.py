"""The demo's held-out pairs (render at the config's scale, shown at video size) and its scored
table (model, model without camera/render, render, copy-source, codec ceiling; PSNR and SSIM)."""

import numpy as np
import pytest

from configs import common
from configs import demo as demo_config
from postcam_jax import demo
from postcam_jax.data import multicam, synthetic
from postcam_jax.training import data as train_data


class _ZeroCodec:
  def encode(self, video):
    return np.zeros((1 + (len(video) - 1) // 4, video.shape[1] // 8, video.shape[2] // 8, 16),
                    np.float32)


@pytest.mark.parametrize("scale", [1, 4])
def test_held_out_render_at_the_config_scale_shown_at_video_size(scale, tmp_path):
  config = demo_config.get_config()
  with config.unlocked():
    config.data.render_scale = scale
  pairs = demo.held_out_pairs(config, str(tmp_path), _ZeroCodec(), 1)
  (ex,) = pairs
  assert ex["render"].shape == ex["source"].shape == ex["target"].shape
  valid = (ex["render"] > -0.999).any(-1)
  assert 0.05 < valid.mean() < 1.0  # the warp fills part of the view, holes elsewhere
  if scale == 4:  # the release's render: 4x4 blocks of one colour once brought to video size
    assert np.array_equal(ex["render"][:, ::4, ::4], ex["render"][:, 3::4, 3::4])


def test_scores_and_table():
  rng = np.random.default_rng(0)
  target = rng.uniform(-1, 1, (5, 32, 48, 3)).astype(np.float32)
  videos = {"pred": target + 0.05 * rng.normal(size=target.shape),
            "no_condition": target + 0.5 * rng.normal(size=target.shape),
            "render": np.full_like(target, -1.0), "copy_source": target[::-1],
            "codec_ceiling": target + 0.01 * rng.normal(size=target.shape)}
  rows = [demo.score_pair(f"p{i}", target=target, **videos) for i in range(2)]
  mean = demo.mean_scores(rows)
  assert mean["codec_ceiling_psnr"] > mean["pred_psnr"] > mean["no_condition_psnr"]
  assert mean["pred_ssim"] > mean["no_condition_ssim"]
  assert set(mean) == {f"{k}_{m}" for k, _ in demo.SCORED for m in ("psnr", "ssim")}
  lines = demo.results_table(rows, mean)
  assert len(lines) == 2 + len(rows) + 1
  assert all(h in lines[0] for h in ("prediction", "no camera/render", "render", "copy source"))
  assert lines[-1].split()[0] == "mean"
  assert f"{mean['pred_psnr']:.2f} / {mean['pred_ssim']:.3f}" in lines[-1]


def test_camera_layout_of_the_config_reaches_the_generated_scenes(tmp_path):
  """``data.camera_spread_deg`` / ``camera_distance_m`` generate the scenes with those cameras,
  under their own folder and cache key (the dataset's layout keeps the old ones)."""
  size = dict(num_scenes=1, num_cameras=2, num_frames=9, height=32, width=48)
  data = common.data_synthetic(batch_size=1, cache_dir=str(tmp_path), camera_spread_deg=30.0,
                               camera_distance_m=7.0, **size)
  default = common.data_synthetic(batch_size=1, cache_dir=str(tmp_path), **size)
  assert train_data.camera_layout(data) == {"camera_spread_deg": 30.0, "camera_distance_m": 7.0}
  assert train_data.camera_layout(default) == {}
  assert (train_data._cache_path(data, "train")  # pylint: disable=protected-access
          != train_data._cache_path(default, "train"))  # pylint: disable=protected-access
  assert len(train_data.pixel_examples(data, "train")) == 2
  (root,) = [d for d in (tmp_path).iterdir() if d.name.startswith("scenes_")]
  scene = multicam.scan_dataset(str(root), "train").scenes[0]
  spec = synthetic.build_scene(synthetic.GeneratorConfig(
      seed=0, camera_spread_deg=30.0, camera_distance_m=7.0, **size), 0)
  for cam in ("cam01", "cam02"):
    np.testing.assert_allclose(scene.c2w[cam], spec.dataset_c2w(cam), atol=1e-9)
