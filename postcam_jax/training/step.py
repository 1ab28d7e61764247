"""The jitted training and evaluation steps, and their abstract inputs for AOT planning.

:func:`make_train_step` builds the step the loop runs; the planner (``postcam_jax.planning``)
lowers that same function on :func:`abstract_train_inputs` (nothing allocated).
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from postcam_jax import parallel
from postcam_jax.models.postcam import PostCamModel, trainable
from postcam_jax.training import losses
from postcam_jax.training.state import (
  batch_sharding,
  camera_shape,
  make_optimizer,
  model_config,
  replicated,
  split_train_state,
)


def make_train_step(graphdef, loss_cfg: losses.LossConfig, *, camera: bool, render: bool,
                    fixed_noise: bool = False, shardings=None, accum_steps: int = 1):
  """The jitted optimizer step ``(params, opt, frozen, rng, batch) -> (params, opt, metrics)``.

  ``params``/``opt`` are donated. ``rng`` is the run's base key data; the step's key is
  ``fold_in(rng, optimizer updates so far)``, so a resumed run draws the same noise
  (``fixed_noise``: the same timesteps and noise at every step, for overfit checks); each example
  draws its own from ``fold_in(key, its row in the whole batch)`` (``losses.draw_noise``).

  ``accum_steps`` > 1 (``optim.accum_steps``): ``batch`` holds that many micro-batches stacked on
  a leading axis ([accum, micro, ...], :func:`stacked_batch_sharding`); one ``lax.scan`` sums their
  gradients (each micro-batch draws only its own rows' noise) and the optimizer applies the mean
  once: the update of the whole batch, up to float rounding, in one call. ``shardings``: the
  (params, opt, frozen, rng, batch) input shardings, and params/opt leave the step in the same
  layouts (the loop passes the state's own, so the parameters keep their declared shardings
  step after step and one executable serves the run); None lets jit follow the arguments' (a
  cached jit per graphdef and stage). The metrics: ``loss`` (mean over the micro-batches),
  ``grad_norm`` (of the applied, averaged gradient), ``sigma_mean`` and ``state_finite``: whether
  the updated trainable parameters and optimizer state are free of NaN/Inf (one check per step;
  the loop never checkpoints a state without).
  """
  if shardings is not None:  # a hashable form, so runs of one process share the compile
    leaves, treedef = jax.tree.flatten(tuple(shardings))
    shardings = (tuple(leaves), treedef)
  return _cached_train_step(graphdef, loss_cfg, camera, render, fixed_noise, int(accum_steps),
                            shardings)


@functools.lru_cache(maxsize=16)
def _cached_train_step(graphdef, loss_cfg, camera, render, fixed_noise, accum_steps,
                       flat_shardings):
  fn = _train_step_fn(graphdef, loss_cfg, camera, render, fixed_noise, accum_steps)
  if flat_shardings is None:
    return jax.jit(fn, donate_argnums=(0, 1))
  shardings = jax.tree.unflatten(flat_shardings[1], flat_shardings[0])
  return jax.jit(fn, donate_argnums=(0, 1), in_shardings=shardings,
                 out_shardings=(shardings[0], shardings[1], None))


def _train_step_fn(graphdef, loss_cfg, camera, render, fixed_noise, accum_steps):
  """The un-jitted step of :func:`make_train_step`."""

  def step(params, opt, frozen_params, rng, batch):
    model, optimizer = nnx.merge(graphdef, params, frozen_params, opt)
    key = jax.random.wrap_key_data(rng)
    if not fixed_noise:
      key = jax.random.fold_in(key, optimizer.step[...])
    model_graph, weights, rest = nnx.split(model, trainable, ...)

    def loss_and_grad(micro_batch, index):
      def loss_fn(w):
        m = nnx.merge(model_graph, w, rest)
        return losses.flow_matching_loss(m, micro_batch, key, loss_cfg, camera=camera,
                                         render=render, micro=(index, accum_steps))
      return jax.value_and_grad(loss_fn, has_aux=True)(weights)

    if accum_steps == 1:
      (loss, aux), grads = loss_and_grad(batch, 0)
    else:
      def accumulate(carry, xs):
        grad_sum, loss_sum, sigma_sum = carry
        index, micro_batch = xs
        (loss, aux), g = loss_and_grad(micro_batch, index)
        grad_sum = jax.tree.map(lambda a, b: a + b.astype(a.dtype), grad_sum, g)
        return (grad_sum, loss_sum + loss, sigma_sum + aux["sigma_mean"]), None

      zeros = jax.tree.map(lambda w: jnp.zeros(w.shape, jnp.float32), weights)
      (grad_sum, loss_sum, sigma_sum), _ = jax.lax.scan(
          accumulate, (zeros, jnp.float32(0), jnp.float32(0)),
          (jnp.arange(accum_steps), batch))
      grads = jax.tree.map(lambda s, w: (s / accum_steps).astype(w.dtype), grad_sum, weights)
      loss, aux = loss_sum / accum_steps, {"sigma_mean": sigma_sum / accum_steps}
    optimizer.update(model, grads)
    _, params, _, opt = split_train_state(model, optimizer)
    return params, opt, {"loss": loss, "grad_norm": optax.global_norm(grads),
                         "state_finite": all_finite((params, opt)), **aux}

  return step


def stacked_batch_sharding(batch_shard):
  """The sharding of ``accum`` stacked micro-batches [accum, micro, ...]: each micro-batch laid
  out as ``batch_shard`` (a micro-batch's), the stacking axis unsplit."""
  return jax.sharding.NamedSharding(batch_shard.mesh,
                                    jax.sharding.PartitionSpec(None, *batch_shard.spec))


def all_finite(tree) -> jax.Array:
  """A scalar bool: every floating-point leaf of ``tree`` (an nnx State or pytree) is finite."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return jnp.bool_(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


@functools.lru_cache(maxsize=16)
def make_eval_step(graphdef, sigmas, *, camera: bool, render: bool, zero_camera: bool = False):
  """Jitted ``(params, opt, frozen, key, batch) -> validation losses [len(sigmas)]``."""

  def step(params, opt, frozen_params, key_data, batch):
    model, _ = nnx.merge(graphdef, params, frozen_params, opt)
    return losses.validation_loss(model, batch, jax.random.wrap_key_data(key_data),
                                  tuple(sigmas), camera=camera, render=render,
                                  zero_camera=zero_camera)

  return jax.jit(step)


def abstract_train_inputs(config, mesh, latent_shape, render_shape=None):
  """ShapeDtypeStructs (with shardings) of every input of the train step, nothing allocated:
  what an AOT planner passes to ``make_train_step(...).lower``. Returns (graphdef, inputs). The
  batch's camera is the model's representation (:func:`camera_shape`): [B, 11, 12], or
  [B, N, 24] for a Plucker model with N the target tokens of ``latent_shape``."""
  cfg = model_config(config)
  tx, _ = make_optimizer(config)

  def create():
    model = PostCamModel(cfg, rngs=nnx.Rngs(0))
    return model, nnx.Optimizer(model, tx, wrt=trainable)

  model, optimizer = nnx.eval_shape(create)
  graphdef, params, frozen_params, opt = split_train_state(model, optimizer)
  states = (params, opt, frozen_params)
  abstract = [_abstract(s, mesh) for s in states]
  accum = int(config.optim.accum_steps)
  micro = config.data.batch_size // accum
  batch = _abstract_batch(cfg, config, micro, latent_shape, render_shape, mesh)
  if accum > 1:  # the step takes the micro-batches stacked (make_train_step)
    batch = {k: jax.ShapeDtypeStruct((accum, *v.shape), v.dtype,
                                     sharding=stacked_batch_sharding(v.sharding))
             for k, v in batch.items()}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated(mesh))
  return graphdef, (*abstract, rng, batch)


def _abstract(state, mesh):
  shard = parallel.param_shardings(state, mesh)
  pure = nnx.to_pure_dict(state)
  leaves = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), pure,
                        shard)
  out = jax.tree.map(lambda v: v, state)
  nnx.replace_by_pure_dict(out, leaves)
  return out


def _abstract_batch(cfg, config, micro, latent_shape, render_shape, mesh):
  bs = batch_sharding(mesh, micro)
  f32 = jnp.float32
  out = {"target_latent": jax.ShapeDtypeStruct((micro, *latent_shape), f32, sharding=bs),
         "source_latent": jax.ShapeDtypeStruct((micro, *latent_shape), f32, sharding=bs),
         "text_embedding": jax.ShapeDtypeStruct((micro, config.data.text_len, cfg.text_dim), f32,
                                                sharding=bs),
         "camera": jax.ShapeDtypeStruct(camera_shape(cfg, micro, latent_shape), f32,
                                        sharding=bs)}
  if render_shape is not None:
    out["render_latent"] = jax.ShapeDtypeStruct((micro, *render_shape), f32, sharding=bs)
  return out
