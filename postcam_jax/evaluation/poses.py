"""Per-frame camera poses of a video, estimated by Depth Anything 3 on the JAX stack.

The paper estimates the poses of generated videos with VGGT (section 4.1: COLMAP and GLOMAP fail
on dynamic scenes, a feed-forward reconstructor does not). postcam-jax uses Depth Anything 3
(``postcam_jax.models.da3``) instead: it is the release's own pose model (its depth step,
``python -m postcam_jax.depth``), a feed-forward multi-view reconstructor of the same family that
DA3's authors report ahead of VGGT on pose accuracy, already ported here and checked against the
PyTorch package, so the evaluation needs no second network or framework. Numbers measured with it
are comparable with each other (every row of a table, every baseline), not digit for digit with
the paper's VGGT numbers; the estimator's own error is measured on the ground-truth target video
(``target_*`` columns) wherever one exists, as CamI2V does.

The call is the release's (``depth.estimate.estimate`` with ``use_ray_pose=False``, the camera
decoder) on the frames as uint8 RGB; the extrinsics it returns are world-to-camera in OpenCV axes
with the world = the reference view the model picked, up to a global scale (any-view models),
which ``postcam_jax.evaluation.camera`` removes by its alignment.
"""

import numpy as np

from postcam_jax.depth import estimate as estimate_lib
from postcam_jax.evaluation import camera
from postcam_jax.geometry import cameras
from postcam_jax.io import model_dir


def to_uint8(video) -> np.ndarray:
  """uint8 frames pass; float frames in [-1, 1] become the release's pixels
  trunc(clip((x + 1) 127.5, 0, 255))."""
  video = np.asarray(video)
  if video.dtype == np.uint8:
    return video
  x = video.astype(np.float32)
  return np.clip((x + np.float32(1.0)) * np.float32(127.5), 0, 255).astype(np.uint8)


def frame_indices(num_frames: int, count: int) -> np.ndarray:
  """The frames the poses are estimated on: all (``count`` 0 or >= ``num_frames``) or ``count``
  spread over the clip with the release's rounding (``cameras.temporal_indices``), first and last
  included."""
  if count <= 0 or count >= num_frames:
    return np.arange(num_frames)
  if count < 2:
    raise ValueError(f"poses need at least 2 frames (they are relative to the first); got {count}")
  return np.unique(cameras.temporal_indices(num_frames, count))


class PoseEstimator:
  """DA3 (a loaded ``DA3Model``) turning a video into world-to-camera poses [N, 4, 4].

  ``process_res``: the longest side DA3 sees (504, the release's default); ``num_frames``: poses
  on that many frames spread over the clip (0: every frame); ``mesh``: frames spread over devices.
  """

  def __init__(self, model, *, process_res: int = 504, num_frames: int = 0, mesh=None):
    if process_res < 14:
      raise ValueError(f"process_res must be at least 14 (one DA3 patch); got {process_res}")
    self.model = model
    self.process_res = int(process_res)
    self.num_frames = int(num_frames)
    self.mesh = mesh

  @classmethod
  def load(cls, directory: str, **kwargs) -> "PoseEstimator":
    """From a converted DA3 directory (``tools/convert_weights.py da3``)."""
    return cls(model_dir.load_da3(directory, mesh=kwargs.get("mesh")), **kwargs)

  def indices(self, num_frames: int) -> np.ndarray:
    return frame_indices(num_frames, self.num_frames)

  def __call__(self, video) -> np.ndarray:
    """World-to-camera float64 [N, 4, 4] of the frames ``indices(len(video))`` of ``video``
    ([T, H, W, 3] uint8, or float in [-1, 1])."""
    frames = to_uint8(video)[self.indices(len(video))]
    prediction = estimate_lib.estimate(self.model, frames, process_res=self.process_res,
                                       use_ray_pose=False, mesh=self.mesh)
    return camera.as_4x4(prediction.extrinsics)
