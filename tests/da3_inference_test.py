"""``postcam_jax.depth.estimate`` equals the release's ``DepthAnything3.inference`` (float32).

The whole call as the PostCam release makes it (``inference(frames, use_ray_pose=False)``, other
arguments at their defaults except a small ``process_res`` to keep the test fast): resizing
(OpenCV without IPP against ``cubic="opencv"``, bit for bit: see ``da3_reference.py``; the
default IPP-equivalent kernel is exact but for float32 ties, ``da3_preprocess_test.py``), normalisation, reference view, network and the
returned depth, confidence, extrinsics and intrinsics at the processed resolution. Also the other
resize methods and the nested model (metric scale alignment). Errors are
``max |jax - torch| / max |torch|`` below 1e-5 (float32 rounding).
"""

import numpy as np
import pytest

from postcam_jax.depth import estimate as estimate_lib
from postcam_jax.models.da3 import DA3Config
from tests import da3_model_test as model_test
from tests import da3_reference as ref

TOL = 1e-5


@pytest.fixture(scope="module")
def small():
  cfg = DA3Config.from_name("da3-small")
  torch_model, state = ref.build_torch(cfg, seed=11, preset=True)
  return torch_model, ref.jax_model(cfg, state), state


def video(n, h, w, seed=0):
  """A moving smooth pattern (so the views differ plausibly), uint8 RGB."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:h, :w].astype(np.float32)
  frames = []
  for t in range(n):
    base = 127 + 90 * np.sin((x + 3 * t) / 9.0 + y / 13.0)[..., None] * np.array([1, 0.6, -0.8])
    frames.append(np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))
  return np.stack(frames)


def compare(prediction, want, what):
  assert prediction.processed_hw == want.depth.shape[1:]
  pairs = [("depth", prediction.depth, want.depth), ("conf", prediction.conf, want.conf),
           ("extrinsics", prediction.extrinsics, want.extrinsics[:, :3]),
           ("intrinsics", prediction.intrinsics, want.intrinsics)]
  for key, got, expected in pairs:
    assert got.dtype == np.float32 and got.shape == expected.shape, (what, key)
    err = ref.relative_error(got, expected)
    assert err < TOL, f"{what} {key}: relative error {err:.3g}"


@pytest.mark.parametrize("shape,res,method", [
    ((60, 90), 56, "upper_bound_resize"),   # INTER_AREA to 56x37, then INTER_CUBIC to 56x42
    ((50, 70), 42, "lower_bound_crop"),
])
def test_estimate_equals_release_inference(small, shape, res, method):
  torch_model, jax_model, _ = small
  frames = video(4, *shape)
  with ref.no_ipp():
    want = ref.inference(torch_model, frames, use_ray_pose=False, process_res=res,
                         process_res_method=method)
  got = estimate_lib.estimate(jax_model, frames, process_res=res, process_res_method=method,
                              cubic="opencv")
  compare(got, want, f"{method}@{res}")


def test_nested_estimate_equals_release_inference():
  cfg, _, _ = model_test.CASES["da3nested-4-4"]
  torch_model, state = ref.build_torch(cfg, seed=12)
  jax_model = ref.jax_model(cfg, state)
  frames = video(3, 40, 60, seed=1)
  with ref.no_ipp():
    want = ref.inference(torch_model, frames, use_ray_pose=False, process_res=42)
  got = estimate_lib.estimate(jax_model, frames, process_res=42, cubic="opencv")
  compare(got, want, "nested")
  assert want.scale_factor is not None and want.is_metric
  assert abs(got.scale_factor - want.scale_factor) <= TOL * abs(want.scale_factor)


def test_bad_arguments(small):
  _, jax_model, _ = small
  frames = video(2, 28, 42)
  with pytest.raises(ValueError, match="uint8"):
    estimate_lib.estimate(jax_model, frames.astype(np.float32))
  with pytest.raises(ValueError, match="ref_view_strategy"):
    estimate_lib.estimate(jax_model, frames, ref_view_strategy="best")
  with pytest.raises(ValueError, match="process_res_method"):
    estimate_lib.estimate(jax_model, frames, process_res_method="stretch")


def test_bfloat16_backbone_runs_close_to_float32(small):
  """The optional bf16 backbone (the release's GPU autocast does the same to its ViT). Not a
  parity check: bf16 keeps 8 mantissa bits, so the bound is loose on purpose and only catches a
  broken bf16 path (NaNs, a dropped cast, a wrong scale)."""
  _, jax_model, state = small
  bf16 = ref.jax_model(jax_model.cfg.replace(precision="bfloat16"), state)
  frames = video(4, 60, 90)
  want = estimate_lib.estimate(jax_model, frames, process_res=56)
  got = estimate_lib.estimate(bf16, frames, process_res=56)
  for a in (got.depth, got.conf, got.extrinsics, got.intrinsics):
    assert np.all(np.isfinite(a))
  # Depth only: with random weights a field of view can sit at the ReLU's zero (the focal length
  # then jumps to (W/2) / 1e-6) and the reference view's argmin can flip, so cameras are no
  # measure of bf16 here.
  assert ref.relative_error(got.depth, want.depth) < 0.05
