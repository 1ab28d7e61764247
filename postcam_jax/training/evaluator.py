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
    self.graphdef = graphdef
    self.batches = [global_batch(b, shard) for b in batches]
    key = jax.random.key_data(jax.random.key(config.eval.seed))
    self.key = jax.device_put(key, replicated(mesh))
    self.steps = {}

  def __call__(self, stage: Stage, params, opt, frozen_params) -> dict:
    out = {}
    variants = [False] + ([True] if self.zero_camera and stage.camera else [])
    for zero in variants:
      key = (stage.kind, zero)
      if key not in self.steps:
        self.steps[key] = make_eval_step(self.graphdef, self.sigmas, camera=stage.camera,
                                         render=stage.render, zero_camera=zero)
      per_batch = [self.steps[key](params, opt, frozen_params, self.key, b) for b in self.batches]
      values = np.mean(np.asarray(jax.device_get(per_batch)), axis=0)
      name = "val/loss_zero_camera" if zero else "val/loss"
      out[name] = float(np.mean(values))
      if not zero:
        out.update({f"val/loss_sigma{s:g}": float(v) for s, v in zip(self.sigmas, values)})
    return out
