"""The other command lines' outputs: ``python -m postcam_jax.depth`` (a folder it did not make,
or one holding its video, is never replaced), ``python -m postcam_jax.data.synthetic`` (scenes
written whole, replaced only with --overwrite and only when generated), ``python -m
postcam_jax.aot`` (flag errors and a bad --out in one line, exit 2; a journal line cut by a
crash is skipped and ended)."""

import json
import os
import subprocess
import sys

import pytest

from postcam_jax.core import atomic
from postcam_jax.data import synthetic
from postcam_jax.depth import cli as depth_cli
from postcam_jax.planning import cli as planning
from postcam_jax.planning.sweep import Journal
from tests.conftest import REPO

TINY = os.path.join(REPO, "configs", "postcam_tiny.py")


def one_line(capsys, needle) -> str:
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1, err
  return err


# ----------------------------------------------------------------------------------------------
# python -m postcam_jax.depth


@pytest.mark.parametrize("case,needle", [
    ("user_folder", "was not made by postcam-jax (no .postcam-jax in it)"),
    ("holds_video", "holds the input"),
    ("under_file", "which is a file, not a folder"),
])
def test_depth_output_checks_come_first(tmp_path, capsys, case, needle):
  """Before the model or the video are even looked at (neither exists here but the clip)."""
  out = tmp_path / "vggt"
  clip = tmp_path / "clip.mp4"
  clip.write_bytes(b"a video")
  if case == "user_folder":
    out.mkdir()
    (out / "notes.txt").write_text("mine")
  elif case == "holds_video":
    out.mkdir()
    atomic.write_marker(out)  # an earlier run's folder, where the user then put the clip
    clip = out / "clip.mp4"
    clip.write_bytes(b"a video")
  else:
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" / "vggt"
  before = sorted(os.listdir(tmp_path))
  code = depth_cli.main(["--model", str(tmp_path / "no_model"), "--video", str(clip), "--out",
                         str(out), "--overwrite"])
  assert code == 2
  one_line(capsys, needle)
  assert sorted(os.listdir(tmp_path)) == before and clip.read_bytes() == b"a video"


# ----------------------------------------------------------------------------------------------
# python -m postcam_jax.data.synthetic

SCENE = ["--num_scenes", "1", "--num_cameras", "2", "--num_frames", "3", "--height", "16",
         "--width", "24", "--supersample", "1"]


def test_synthetic_scenes_are_replaced_only_with_overwrite_and_only_when_generated(
    tmp_path, capsys):
  root = tmp_path / "mc"
  argv = ["--root", str(root), *SCENE]
  assert synthetic.main(argv) == 0
  (scene,) = synthetic.scene_dirs(synthetic.GeneratorConfig(root=str(root), num_scenes=1))
  assert synthetic.SCENE_MARKER in os.listdir(scene)
  capsys.readouterr()
  assert synthetic.main(argv) == 2
  one_line(capsys, f"output {scene} exists; pass --overwrite to replace it")
  (open(os.path.join(scene, "extra.txt"), "w")).close()
  assert synthetic.main([*argv, "--overwrite"]) == 0  # a generated scene: replaced whole
  assert "extra.txt" not in os.listdir(scene)
  os.remove(os.path.join(scene, synthetic.SCENE_MARKER))  # now it is not a generated scene
  assert synthetic.main([*argv, "--overwrite"]) == 2
  one_line(capsys, "was not made by postcam-jax (no scene.json in it)")
  assert synthetic.main(["--root", str(root), *SCENE[:-2], "--height", "15"]) == 2
  one_line(capsys, "height and width must be even")
  assert not [n for n in os.listdir(os.path.dirname(scene)) if n.startswith(".")]


# ----------------------------------------------------------------------------------------------
# python -m postcam_jax.aot


@pytest.mark.parametrize("extra,needle", [
    (["--config.data.heigth=64"], "no field 'data.heigth'"),
    (["--out", "FILE"], "is a file, not a folder"),
    (["--mesh", "rows=2"], "mesh entries are AXIS=SIZE"),
], ids=["unknown_key", "out_is_a_file", "bad_mesh"])
def test_aot_flag_errors_are_one_line(tmp_path, extra, needle):
  (tmp_path / "file").write_text("mine")
  extra = [str(tmp_path / "file") if e == "FILE" else e for e in extra]
  with pytest.raises(SystemExit) as error:
    planning.main(["--config", TINY, "--topology", "v5p:1x1x1", *extra])
  assert str(error.value).startswith("error: ") and needle in str(error.value)
  assert len(str(error.value).splitlines()) == 1
  assert (tmp_path / "file").read_text() == "mine"


def test_aot_command_exits_2_with_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "postcam_jax.aot", "--config", TINY, "--topology",
                         "v9:1x1"], cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
      "error: unknown TPU generation 'v9' in topology 'v9:1x1'; known: ['v4', 'v5e', 'v5p', "
      "'v6e'] (e.g. 'v5p:2x2x2', 'v6e:2x4')"]


def test_a_journal_line_cut_by_a_crash_is_planned_again(tmp_path, capsys):
  """A sweep killed mid-append: the rerun reads every whole entry, reports the cut one (its
  candidate is planned again) and appends after it on a line of its own."""
  path = tmp_path / "sweep_candidates.jsonl"
  path.write_text(json.dumps({"key": "a", "report": {"fits": True}}) + "\n" + '{"key": "b", "rep')
  journal = Journal(str(path))
  assert journal.done == {"a": {"fits": True}}
  assert "line 2 is not a whole entry" in capsys.readouterr().err
  assert atomic.append_line(path, json.dumps({"key": "b", "report": {"fits": False}}))
  assert Journal(str(path)).done == {"a": {"fits": True}, "b": {"fits": False}}
