"""benchmarks/demo_validation.py: a demo checkpoint scored on every validation pair of the recipe
it records (docs/experiments.md's held-out numbers), several noises per pair averaged."""

import importlib.util
import os
import subprocess
import sys

import pytest
from flax import nnx

from configs import demo as demo_config
from postcam_jax import demo, training
from postcam_jax.models.postcam import PostCamModel
from postcam_jax.training import data as train_data
from postcam_jax.training import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "demo_validation.py")
_spec = importlib.util.spec_from_file_location("demo_validation", SCRIPT)
demo_validation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_validation)


def _small_checkpoint(tmp_path, eval_scenes=1):
  """A random model of the demo's architecture on a small recipe (1 + 1 scenes of 2 cameras at
  32x48): what the benchmark reads is the recipe the sidecar records."""
  config = demo_config.get_config()
  with config.unlocked():
    config.data.update(num_scenes=1, num_eval_scenes=eval_scenes, num_cameras=2, height=32,
                       width=48, cache_dir=str(tmp_path / "fit"))
  recipe = demo.recipe_of(config, 0)
  model = PostCamModel(training.model_config(config), rngs=nnx.Rngs(0))
  path = str(tmp_path / f"small{eval_scenes}.safetensors")
  export.save_bundle(path, model, train_data.stand_in_codec(config.data),
                     {"command": "test", "seed": 0, "recipe": recipe, "train_seconds": 0,
                      "machine": "test", "made": "today", "metrics": {}})
  return path


def test_scores_every_validation_pair_and_averages_noise_draws(tmp_path):
  path = _small_checkpoint(tmp_path)
  one = demo_validation.score_validation(path, 0, 2, str(tmp_path / "a"))
  two = demo_validation.score_validation(path, 0, 2, str(tmp_path / "b"), draws=2)
  assert [r["pair"] for r in one] == [r["pair"] for r in two] == ["00", "01"]  # 2 ordered pairs
  for a, b in zip(one, two):
    assert set(a) == {"pair"} | {f"{k}_{m}" for k, _ in demo.SCORED for m in ("psnr", "ssim")}
    for key in ("render", "copy_source", "mean_image", "codec_ceiling"):  # no noise in these
      assert a[f"{key}_psnr"] == b[f"{key}_psnr"], key
    assert a["pred_psnr"] != b["pred_psnr"]  # the second noise's sample enters the average
    # The latents are the recorded recipe's and the codec the checkpoint's: their decode is
    # the target's best reconstruction, far above the flat mean image.
    assert a["codec_ceiling_psnr"] > a["mean_image_psnr"] + 3.0


def test_other_held_out_scenes_by_count_and_seed(tmp_path):
  """--scenes/--scene_seed: a set of scenes common to checkpoints of several data seeds, encoded
  with each checkpoint's own codec; the training scenes' seed is refused."""
  path = _small_checkpoint(tmp_path)
  own = demo_validation.score_validation(path, 0, 2, str(tmp_path / "a"))
  other = demo_validation.score_validation(path, 0, 2, str(tmp_path / "b"), scenes=2,
                                           scene_seed=77)
  assert [r["pair"] for r in other] == ["00", "01", "02", "03"]  # 2 scenes x 2 ordered pairs
  # The training scene (seed 0, for the codec's fit) and the 2 scenes of seed 77.
  made = sorted(p.name.split("_")[1:3] for p in (tmp_path / "b").glob("scenes_*"))
  assert made == [["0", "1"], ["77", "2"]], made
  assert other[0]["copy_source_psnr"] != own[0]["copy_source_psnr"]  # other scenes
  assert all(r["codec_ceiling_psnr"] > r["mean_image_psnr"] + 3.0 for r in other)
  with pytest.raises(demo_validation.SceneSeedError, match="training scenes"):
    demo_validation.score_validation(path, 0, 2, str(tmp_path / "c"), scene_seed=0)
  pairs_held_out = _small_checkpoint(tmp_path, eval_scenes=0)  # held-out pairs, not scenes
  with pytest.raises(demo_validation.SceneSeedError, match="give --scenes N too"):
    demo_validation.score_validation(pairs_held_out, 0, 2, str(tmp_path / "d"), scene_seed=77)


def test_the_command_line_fails_in_one_line(tmp_path):
  done = subprocess.run([sys.executable, SCRIPT, "--checkpoint", str(tmp_path / "none.st")],
                        capture_output=True, text=True, timeout=300, cwd=REPO)
  errors = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert done.returncode != 0 and len(errors) == 1 and "--train" in errors[0], done.stderr
  done = subprocess.run([sys.executable, SCRIPT, "--draws", "0"], capture_output=True,
                        text=True, timeout=300, cwd=REPO)
  assert done.returncode == 2 and "--draws" in done.stderr.splitlines()[-1]
