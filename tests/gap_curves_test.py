"""benchmarks/gap_curves.py: the validation-loss curves with and without camera + render."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gap_curves.py")


def _metrics(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return str(path)


def test_plots_runs_and_prints_each_runs_last_validation(tmp_path):
  a = _metrics(tmp_path / "a.jsonl", [
      {"step": 50, "train/loss": 1.0},  # a training record: not a validation
      {"step": 600, "val/loss": 0.9, "val/loss_no_condition": 0.95},
      {"step": 1200, "val/loss": 0.7, "val/loss_no_condition": 0.9}])
  b = _metrics(tmp_path / "b.jsonl", [
      {"step": 600, "val/loss": 0.8, "val/loss_no_condition": 0.85}])
  out = tmp_path / "gap.png"
  run = subprocess.run([sys.executable, SCRIPT, "--out", str(out), f"first={a}",
                        f"second run={b}"], capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  lines = run.stdout.splitlines()
  assert lines[1].split() == ["first", "1200", "0.7000", "0.9000", "0.2000"]
  assert lines[2].split() == ["second", "run", "600", "0.8000", "0.8500", "0.0500"]
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_without_the_no_condition_curve_is_one_clear_error(tmp_path):
  a = _metrics(tmp_path / "a.jsonl", [{"step": 600, "val/loss": 0.9}])
  run = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "x.png"), f"a={a}"],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1].startswith("error:")
  assert "eval.no_condition_baseline=True" in run.stderr
  assert not (tmp_path / "x.png").exists()
  bad = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "x.png"), "nolabel"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "LABEL=PATH" in bad.stderr


def test_a_missing_or_foreign_file_is_one_clear_error(tmp_path):
  (tmp_path / "notes.txt").write_text("not json\n")
  for path, words in ((tmp_path / "none.jsonl", "cannot read"),
                      (tmp_path / "notes.txt", "is not a trainer's metrics.jsonl")):
    run = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "x.png"),
                          f"a={path}"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and words in run.stderr
  assert not (tmp_path / "x.png").exists()
