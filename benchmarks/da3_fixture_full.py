"""The release's whole depth step on all 41 frames of test1.mp4 against its golden fixture.

  python benchmarks/da3_fixture_full.py [--cubic ipp,opencv,cv2] [--workdir /tmp/da3_fixture_full]

Regenerates the fixture's random da3-small by its recipe (``tests/da3_fixture_test.py``, needs the
test extra), converts it, runs ``estimate`` on the 41 decoded frames with each cubic kernel, then
the release's post-processing, and compares with ``shared/fixtures/da3-release-step2``: the
prediction (max absolute and relative error of depth, extrinsics, intrinsics against
``prediction.npz``) and the written folder (16-bit depth PNG values that differ, the largest
difference, whether the text files are equal). Prints one JSON line per kernel. Takes minutes
per kernel on 2 CPU cores; too slow for ``make test`` (docs/performance.md).
"""

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from postcam_jax.convert import da3 as convert_da3  # noqa: E402
from postcam_jax.depth import estimate as estimate_lib  # noqa: E402
from postcam_jax.depth import release  # noqa: E402
from postcam_jax.io import model_dir, video  # noqa: E402
from tests import da3_fixture_test as fixture_test  # noqa: E402

TEXT_FILES = ("metadata.txt", "extrinsics.txt", "intrinsics.txt")


def compare_folder(out: pathlib.Path) -> dict:
  want_dir = os.path.join(fixture_test.FIXTURE, "release_out")
  differing, total, largest = 0, 0, 0
  for name in sorted(os.listdir(os.path.join(want_dir, "depth"))):
    with Image.open(out / "depth" / name) as g, Image.open(os.path.join(want_dir, "depth",
                                                                         name)) as w:
      got, want = np.asarray(g).astype(np.int64), np.asarray(w).astype(np.int64)
    differing += int((got != want).sum())
    total += want.size
    largest = max(largest, int(np.abs(got - want).max()))
  texts = {}
  for name in TEXT_FILES:
    with open(out / name) as a, open(os.path.join(want_dir, name)) as b:
      texts[name] = a.read() == b.read()
  return {"png_values_differing": differing, "png_values": total, "png_largest_difference":
          largest, "text_files_equal": texts}


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cubic", default="ipp,opencv,cv2", help="cubic kernels to run, comma-separated")
  p.add_argument("--workdir", default="/tmp/da3_fixture_full")
  args = p.parse_args()
  work = pathlib.Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  if not (work / "da3" / "model.json").exists():
    fixture_test.fixture_model(work / "release")
    convert_da3.convert_da3(str(work / "release"), str(work / "da3"))
  model = model_dir.load_da3(str(work / "da3"))
  frames = video.read_video(fixture_test.VIDEO)
  with np.load(os.path.join(fixture_test.FIXTURE, "prediction.npz")) as data:
    fixture = dict(data)
  for cubic in args.cubic.split(","):
    t0 = time.time()
    pred = estimate_lib.estimate(model, frames, cubic=cubic)
    seconds = time.time() - t0
    errors = {}
    for key in ("depth", "extrinsics", "intrinsics"):
      diff = float(np.abs(getattr(pred, key).astype(np.float64) - fixture[key]).max())
      errors[key] = {"abs": diff, "rel": diff / float(np.abs(fixture[key]).max())}
    result = release.postprocess(pred.depth, pred.extrinsics, pred.intrinsics, pred.processed_hw)
    out = work / f"release_out_{cubic}"
    release.write_release_folder(out, result, frames, progress=False, overwrite=True)
    print(json.dumps({"cubic": cubic, "estimate_seconds": round(seconds, 1), "errors": errors,
                      **compare_folder(out)}), flush=True)


if __name__ == "__main__":
  main()
