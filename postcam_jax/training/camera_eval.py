"""Camera accuracy and fidelity of sampled held-out pairs: during training, and of a finished run.

:class:`CameraEvaluator` is the trainer's optional hook (``config.eval.camera``, off by default;
``configs/common.py`` states its cost): at its steps it samples ``num_pairs`` held-out pairs with
the live model (the inputs of the current stage), decodes them, and logs to TensorBoard beside
``val/loss``: ``val/rot_err``, ``val/trans_err``, ``val/cam_mc`` (DA3 poses of the generated
videos against the requested target paths, ``postcam_jax.evaluation.camera``), ``val/psnr`` and
``val/ssim`` against the true target videos, and the same for the baselines (``val/*_copy_source``,
``val/*_render``, and ``val/*_target``, the pose estimator's own error on the true target). The
baselines do not change while training: their poses are estimated once.

:func:`load_subject` rebuilds a finished (or running) trainer workdir's model (the backbone its
checkpoint names, the trainable set of its latest checkpoint) with the held-out pairs of its own
data config: what ``python -m postcam_jax.evaluate --workdirs ...`` measures.

Held-out pairs: of generated scenes (``data.source = "synthetic"``), the true pixels of the
held-out split (``training.data.pixel_examples``), the model inputs of ``synthetic_examples``, the
full-size render of the release's warp, and the stand-in codec to decode (``data.encoder = "pca"``:
the fixed random projection of ``"patch"`` cannot be inverted); of prepared latent records
(``"arrayrecord"``), the first records of ``data.eval_split`` decoded by the Wan-VAE of
``eval.camera.vae`` (``postcam_jax.evaluation.heldout.record_pairs``).
"""

import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from postcam_jax import parallel
from postcam_jax.evaluation import camera as camera_lib
from postcam_jax.evaluation import heldout, poses, report
from postcam_jax.geometry import render
from postcam_jax.training import data as train_data
from postcam_jax.training import resume, state
from postcam_jax.training.stages import stages_of

# Every field of ``config.eval.camera`` (configs/common.py ``camera_eval``) and its default.
DEFAULTS = dict(enabled=False, every=0, num_pairs=4, sample_steps=20, shift=5.0, seed=0,
                depth_model="", process_res=504, pose_frames=0, vae="")
# The logged names: report column -> TensorBoard tag (the model's, then the baselines').
LOGGED = {"pred_rot_err": "val/rot_err", "pred_trans_err": "val/trans_err",
          "pred_cam_mc": "val/cam_mc", "pred_psnr": "val/psnr", "pred_ssim": "val/ssim",
          **{f"{video}_{metric}": f"val/{metric}_{suffix}"
             for video, suffix in (("source", "copy_source"), ("render", "render"),
                                   ("target", "target"))
             for metric in ("rot_err", "trans_err", "cam_mc", "psnr", "ssim")}}

def camera_settings(config) -> dict:
  """``config.eval.camera`` with the defaults filled in ({"enabled": False} when absent)."""
  given = config.eval.get("camera") if config.get("eval") is not None else None
  given = dict(given or {})
  unknown = sorted(set(given) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"config.eval.camera has unknown field(s) {unknown}; known: "
                     f"{sorted(DEFAULTS)}")
  return {**DEFAULTS, **given}


def decoder_of(config, settings: dict):
  """Latent -> video in [-1, 1] for the run's data: the stand-in codec or the Wan-VAE."""
  data = config.data
  if data.source == "synthetic":
    codec = train_data.stand_in_codec(data)
    if not hasattr(codec, "decode"):
      raise ValueError("eval.camera decodes the generated latents: with data.source='synthetic' "
                       "set data.encoder='pca' (the 'patch' stand-in cannot be decoded)")
    return codec.decode
  if not settings["vae"]:
    raise ValueError("eval.camera on prepared records needs eval.camera.vae, the converted "
                     "Wan-VAE directory the records were encoded with")
  return heldout.load_decoder(vae=settings["vae"])


def held_out_pairs(config, count: int, decode) -> list[heldout.HeldOutPair]:
  """The first ``count`` held-out pairs of the run's data (module docstring)."""
  data = config.data
  camera = train_data.camera_input(config)
  if data.source != "synthetic":
    return heldout.record_pairs(data.data_dir, data.eval_split, count, decode,
                                camera_input=camera, text_len=data.get("text_len"))
  pixels = train_data.pixel_examples(data, "eval")[:count]
  latents = train_data.synthetic_examples(data, "eval", camera)[:count]
  out = []
  for pixel, latent in zip(pixels, latents):
    as_float = pixel["source_video"].astype(np.float32) / 127.5 - 1.0
    warped, _ = render.forward_warp(as_float, pixel["source_depth"], pixel["source_w2c"],
                                    pixel["target_w2c"], pixel["intrinsics"])
    w2c = np.asarray(pixel["target_w2c"], np.float64)
    name = f"{pixel['scene']}_{pixel['source_camera']}_to_{pixel['target_camera']}"
    out.append(heldout.HeldOutPair(
        name=heldout.safe_name(f"{len(out):03d}_{name}_{int(pixel['start'])}"),
        kind=camera_lib.trajectory_kind(w2c), target_w2c=w2c,
        source_latent=latent["source_latent"], camera=latent["camera"],
        context=latent["text_embedding"], source=pixel["source_video"],
        render_latent=latent["render_latent"],
        render=poses.to_uint8(np.asarray(jax.device_get(warped))),
        target=pixel["target_video"]))
  if not out:
    raise ValueError("eval.camera: the held-out split has no pairs (raise data.num_eval_scenes, "
                     "or keep it 0 to hold out every 4th pair of the training scenes)")
  return out


def estimator_of(settings: dict, mesh=None):
  """The DA3 pose estimator of ``depth_model``, or None (no camera accuracy) when unset."""
  if not settings["depth_model"]:
    return None
  return poses.PoseEstimator.load(settings["depth_model"], process_res=settings["process_res"],
                                  num_frames=settings["pose_frames"], mesh=mesh)


class CameraEvaluator:
  """The trainer's hook (module docstring): ``due(step, total)``, then ``(stage, model)`` ->
  TensorBoard scalars. Built once per run: pairs, decoder and DA3 are loaded here."""

  def __init__(self, config, settings: dict, mesh):
    self.settings = settings
    self.every = int(settings["every"]) or int(config.eval.every)
    if self.every < 1:
      raise ValueError("eval.camera.every must be >= 1 (or 0 to follow eval.every, which is 0)")
    self.decode = decoder_of(config, settings)
    self.pairs = held_out_pairs(config, int(settings["num_pairs"]), self.decode)
    self.estimator = estimator_of(settings)
    if self.estimator is None:
      logging.warning("eval.camera.depth_model is unset: logging fidelity only, no camera "
                      "accuracy")
    self.mesh = mesh
    self.cached = {}  # pair -> {video: poses} of the baselines, estimated once

  @classmethod
  def from_config(cls, config, mesh):
    settings = camera_settings(config)
    return cls(config, settings, mesh) if settings["enabled"] else None

  def due(self, step: int, total: int) -> bool:
    return step % self.every == 0 or step == total

  def __call__(self, stage, model) -> dict:
    start = time.perf_counter()
    subject = heldout.Subject(label="train", model=model, pairs=self.pairs, decode=self.decode,
                              camera=stage.camera, render=stage.render, mesh=self.mesh)
    _, scored = heldout.run_subject(
        subject, self.estimator, steps=int(self.settings["sample_steps"]),
        shift=float(self.settings["shift"]), seed=int(self.settings["seed"]),
        batch=len(self.pairs), cached=self.cached)
    means = report.aggregate([s.row for s in scored])[-1]
    out = {tag: float(means[col]) for col, tag in LOGGED.items()
           if means.get(col) is not None and np.isfinite(means[col])}
    out["val/camera_eval_seconds"] = time.perf_counter() - start
    return out


def stored_config(workdir: str) -> tuple[ml_collections.ConfigDict, int]:
  """(the run's config, step) of a workdir's latest checkpoint."""
  found = resume.stored_meta(workdir)
  if found is None:
    raise ValueError(f"--workdirs {workdir}: no trainer checkpoint in it (expected "
                     f"{os.path.join(workdir, 'checkpoints')}/<step>)")
  step, meta = found
  if not meta.get("config"):
    raise ValueError(f"--workdirs {workdir}: its checkpoint of step {step} records no config")
  return ml_collections.ConfigDict(json.loads(meta["config"])), int(step)


def workdir_report(workdir: str) -> tuple[dict, int]:
  """(the run's ``config.report`` block, {} without one; the latest checkpoint's step)."""
  config, step = stored_config(workdir)
  block = config.get("report")
  return (block.to_dict() if block is not None else {}), step


def load_subject(workdir: str, *, num_pairs: int, mesh=None,
                 vae: str | None = None) -> heldout.Subject:
  """A trainer workdir's model at its latest checkpoint with ``num_pairs`` held-out pairs of its
  data (``python -m postcam_jax.evaluate --workdirs``): the backbone its config names (or the
  seeded random one), the trainable set restored from the checkpoint, the inputs of its last
  stage. ``vae``: the Wan-VAE for a run on prepared records (else its ``eval.camera.vae``);
  ``mesh``: where the model goes (default one device)."""
  config, step = stored_config(workdir)
  settings = camera_settings(config)
  if vae:
    settings["vae"] = vae
  if mesh is None:
    mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  model, _ = state.create_model(config, state.model_config(config), mesh)
  state.init_trainable_from(model, workdir)
  decode = decoder_of(config, settings)
  last = stages_of(config)[-1]
  block = config.get("report")
  return heldout.Subject(
      label=os.path.basename(os.path.normpath(workdir)), model=model,
      pairs=held_out_pairs(config, num_pairs, decode), decode=decode, camera=last.camera,
      render=last.render, mesh=mesh, report=block.to_dict() if block is not None else {},
      step=step)
