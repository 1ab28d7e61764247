"""DA3's ``inference()`` as the PostCam release calls it: ``model.inference(frames,
use_ray_pose=False)`` with every other argument at its default (process_res=504,
process_res_method="upper_bound_resize", ref_view_strategy="saddle_balanced").

:func:`estimate` = :mod:`postcam_jax.depth.preprocess` (the release's OpenCV resizes and ImageNet
normalisation, in numpy), the network (``postcam_jax.models.da3``, views sharded over ``mesh``),
and the outputs the release reads from its ``Prediction``: depth and confidence at the processed
resolution, world-to-camera extrinsics (OpenCV axes, world = the chosen reference view) and
intrinsics in processed-image pixels.

Scale. An any-view model (da3-small/base/large/giant) has no metric scale: depth and translations
are up to one common factor, as the release returns them. The nested model
(da3nested-giant-large, the one the release ships) also runs its metric branch and rescales:
metric depth = metric-branch depth x (fx + fy) / 2 / 300 with the any-view focal length; the scale
s is the least-squares fit of that metric depth on the any-view depth over the non-sky pixels
(metric sky < 0.3) whose confidence is at least the non-sky median (and depths above 1e-3 / 1e-2);
depth and extrinsic translations are multiplied by s, and sky pixels are set to min(0.99 quantile
of non-sky depth, 200) with confidence 1. The release takes its median and 0.99 quantile on a
random 100,000-value subsample when there are more values (``torch.randint``/``randperm``, not
reproducible across frameworks); here they are exact quantiles over all values, which is the
same below 100,000 values and deterministic above.
"""

import contextlib
import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from postcam_jax import parallel
from postcam_jax.depth import preprocess
from postcam_jax.models.da3 import frames as frames_lib
from postcam_jax.models.da3.reference_view import STRATEGIES


@dataclasses.dataclass(frozen=True)
class DepthPrediction:
  depth: np.ndarray        # [N, h, w] float32, model resolution (h, w multiples of 14)
  conf: np.ndarray | None  # [N, h, w] float32 depth confidence
  extrinsics: np.ndarray   # [N, 3, 4] float32 world-to-camera, OpenCV axes
  intrinsics: np.ndarray   # [N, 3, 3] float32, model pixels
  processed_hw: tuple[int, int]
  ref_view: int = 0        # the reference view the model chose (the world frame)
  scale_factor: float | None = None  # nested model: the metric scale applied


@nnx.jit(static_argnames=("valid", "strategy", "use_ray_pose"))
def _forward(model, images, valid, strategy, use_ray_pose, seed, samples):
  return model(images, valid=valid, ref_view_strategy=strategy, use_ray_pose=use_ray_pose,
               ray_pose_key=jax.random.key(seed), ray_pose_samples=samples)


def forward(model, images: np.ndarray, *, ref_view_strategy: str = "saddle_balanced",
            use_ray_pose: bool = False, ray_pose_seed: int = 0, ray_pose_samples=None,
            mesh=None) -> dict:
  """The network on preprocessed float32 images [N, h, w, 3]: numpy outputs with the batch axis
  dropped (one video). ``use_ray_pose``: cameras from the ray head (``models.da3.ray_pose``; its
  RANSAC draws from ``ray_pose_seed``, or ``ray_pose_samples`` [100, 8])."""
  n = images.shape[0]
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    devices = frames_lib.frame_devices(mesh)
    padded = -(-n // devices) * devices
    x = np.pad(images, ((0, padded - n), (0, 0), (0, 0), (0, 0)))[None]
    if mesh is not None:
      axes = frames_lib.frame_axes(mesh)
      spec = P(None, axes if len(axes) > 1 else (axes[0] if axes else None))
      x = parallel.put_global(x, NamedSharding(mesh, spec))  # each host builds its shards
    out = _forward(model, x, n, ref_view_strategy, use_ray_pose, ray_pose_seed,
                   None if ray_pose_samples is None else np.asarray(ray_pose_samples, np.int32))
    return {k: np.asarray(jax.device_get(v))[0] if np.ndim(v) > 0 else np.asarray(v)
            for k, v in out.items()}


def estimate(model, frames: np.ndarray, *, process_res: int = 504,
             process_res_method: str = "upper_bound_resize",
             ref_view_strategy: str = "saddle_balanced", use_ray_pose: bool = False,
             ray_pose_seed: int = 0, ray_pose_samples=None, mesh=None,
             cubic: str = "ipp") -> DepthPrediction:
  """Depth and cameras of uint8 RGB ``frames`` [N, H, W, 3] by a DA3 model with a camera
  decoder (any-view or nested; see the module docstring for the scale). ``cubic``: the kernel of
  the input's cubic resizes (``preprocess.CUBIC_KERNELS``: ``ipp``, what opencv-python's x86
  wheels and so the release compute; ``opencv``, OpenCV's own; ``cv2``, OpenCV itself).
  ``use_ray_pose``: the cameras solved from the ray head instead (``models.da3.ray_pose``; the
  release's RANSAC draws with torch's generator, here from ``ray_pose_seed`` or, to replay a
  run, ``ray_pose_samples`` [100, 8])."""
  if ref_view_strategy not in STRATEGIES:
    raise ValueError(f"unknown ref_view_strategy {ref_view_strategy!r}; choose one of "
                     f"{', '.join(STRATEGIES)}")
  if not model.cfg.net.camera:
    raise ValueError(f"{model.cfg.model_name} has no camera decoder (a mono/metric depth model); "
                     f"estimate needs an any-view or nested DA3 model")
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise ValueError(f"frames must be uint8 RGB [N, H, W, 3] with N >= 1; got {frames.dtype} "
                     f"{tuple(frames.shape)}")
  images = preprocess.preprocess(frames, process_res, process_res_method, cubic)
  out = forward(model, images, ref_view_strategy=ref_view_strategy, use_ray_pose=use_ray_pose,
                ray_pose_seed=ray_pose_seed, ray_pose_samples=ray_pose_samples, mesh=mesh)
  if "non_sky_count" in out and int(out["non_sky_count"]) <= 10:
    raise ValueError(f"the metric branch sees {int(out['non_sky_count'])} non-sky pixels; the "
                     f"nested model needs more than 10 to align the scale")
  f32 = lambda a: np.ascontiguousarray(a, np.float32)  # noqa: E731
  return DepthPrediction(
      depth=f32(out["depth"]), conf=f32(out["depth_conf"]) if "depth_conf" in out else None,
      extrinsics=f32(out["extrinsics"]), intrinsics=f32(out["intrinsics"]),
      processed_hw=tuple(int(s) for s in images.shape[1:3]),
      ref_view=int(np.asarray(out["ref_view"]).reshape(-1)[0]),
      scale_factor=float(out["scale_factor"]) if "scale_factor" in out else None)

