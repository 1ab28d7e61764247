"""Validation during training: losses at fixed noise levels on fixed held-out batches."""

import jax
import numpy as np

from postcam_jax.training.stages import Stage
from postcam_jax.training.state import global_batch, replicated
from postcam_jax.training.step import make_eval_step


class Evaluator:
  """Validation loss on fixed held-out batches at fixed noise levels (deterministic)."""

  def __init__(self, config, graphdef, batches, shard, mesh):
    self.sigmas = tuple(float(s) for s in config.eval.sigmas)
    self.zero_camera = bool(config.eval.zero_camera_baseline)
    # Optional (off unless the config has it): also the loss with the camera zeroed and no render,
    # what the conditions add over the backbone and the source alone.
    self.no_condition = bool(config.eval.get("no_condition_baseline", False))
    self.graphdef = graphdef
    self.batches = [global_batch(b, shard) for b in batches]
    key = jax.random.key_data(jax.random.key(config.eval.seed))
    self.key = jax.device_put(key, replicated(mesh))
    self.steps = {}

  def __call__(self, stage: Stage, params, opt, frozen_params) -> dict:
    out = {}
    # (name, camera, render, zero_camera) of each loss
    variants = [("val/loss", stage.camera, stage.render, False)]
    if self.zero_camera and stage.camera:
      variants.append(("val/loss_zero_camera", True, stage.render, True))
    if self.no_condition:
      variants.append(("val/loss_no_condition", True, False, True))
    for name, camera, render, zero in variants:
      key = (camera, render, zero)
      if key not in self.steps:
        self.steps[key] = make_eval_step(self.graphdef, self.sigmas, camera=camera,
                                         render=render, zero_camera=zero)
      per_batch = [self.steps[key](params, opt, frozen_params, self.key, b) for b in self.batches]
      values = np.mean(np.asarray(jax.device_get(per_batch)), axis=0)
      out[name] = float(np.mean(values))
      if name == "val/loss":
        out.update({f"val/loss_sigma{s:g}": float(v) for s, v in zip(self.sigmas, values)})
    return out
