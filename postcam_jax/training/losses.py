"""Flow matching on the target latent (``../shared/spec/postcam.md``, "Training objective").

``x_s = (1 - s) x0 + s eps``, the model sees ``t = 1000 s`` and predicts ``v = eps - x0``; the loss
is the mean squared error over the target latent only (the source half of the token sequence stays
clean and is never scored). Two timestep samplers, chosen by ``LossConfig.timesteps``:

- ``uniform_shifted`` (default, the ReCamMaster/DiffSynth trainer): a uniform index into the
  training grid of ``num_train_timesteps`` sigmas from 1 towards 0 (``linspace(1, 0, N + 1)[:-1]``:
  the clean end s = 0 is not a grid point), each shifted with ``s' = k s / (1 + (k - 1) s)``,
  k = ``shift`` (5). Optionally weighted by the bell ``w(t) = exp(-2 ((t - 500) / 1000)^2)``
  over the grid's t, shifted to minimum 0 and normalised to mean 1.
- ``logit_normal`` (Wan's report): ``s = sigmoid(n)``, n ~ N(0, 1), then the same shift with k = 2.

``condition_dropout`` p (0, the release's trainer has none): each step, with probability p, the
whole batch trains with the camera zeroed and no render, the input of the evaluation's
no-condition baseline, so "the model without camera and render" is a mode it was trained in
rather than an input it never saw (classifier-free-guidance training does the same).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from postcam_jax.core.config import from_mapping

# ``config.loss`` keys read by the trainer, not by the loss.
TRAINER_LOSS_KEYS = ("fixed_noise",)
SAMPLERS = ("uniform_shifted", "logit_normal")
DEFAULT_SHIFT = {"uniform_shifted": 5.0, "logit_normal": 2.0}


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Timestep sampling of the flow-matching loss. ``shift`` None = the sampler's default."""
  timesteps: str = "uniform_shifted"
  shift: float | None = None
  bell_weight: bool = False
  num_train_timesteps: int = 1000
  condition_dropout: float = 0.0

  def __post_init__(self):
    if self.timesteps not in SAMPLERS:
      raise ValueError(f"unknown timestep sampler {self.timesteps!r}; choose one of {SAMPLERS}")
    if self.bell_weight and self.timesteps != "uniform_shifted":
      raise ValueError("bell_weight applies to the uniform_shifted grid only; got timesteps="
                       f"{self.timesteps!r}")
    if self.num_train_timesteps < 1:
      raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
    if self.shift is not None and self.shift <= 0:
      raise ValueError(f"shift must be > 0, got {self.shift}")
    if not 0.0 <= self.condition_dropout < 1.0:
      raise ValueError(f"condition_dropout is a probability in [0, 1), got "
                       f"{self.condition_dropout}")

  @property
  def k(self) -> float:
    return DEFAULT_SHIFT[self.timesteps] if self.shift is None else float(self.shift)

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "LossConfig":
    """From ``config.loss`` (strict; ``fixed_noise`` is the trainer's, unset values default)."""
    values = {k: v for k, v in dict(config).items() if v is not None}
    return from_mapping(cls, values, ignore=TRAINER_LOSS_KEYS)


def shift_sigma(s, k: float):
  """The resolution shift ``k s / (1 + (k - 1) s)`` (identity at k = 1)."""
  return k * s / (1.0 + (k - 1.0) * s)


def training_grid(cfg: LossConfig) -> tuple[np.ndarray, np.ndarray]:
  """The shifted sigma grid [N] (1 -> ~0) and its loss weights [N] (ones if unweighted)."""
  n = cfg.num_train_timesteps
  sigmas = shift_sigma(np.linspace(1.0, 0.0, n + 1)[:-1], cfg.k)
  if not cfg.bell_weight:
    return sigmas.astype(np.float32), np.ones(n, np.float32)
  t = sigmas * 1000.0
  w = np.exp(-2.0 * ((t - 500.0) / 1000.0) ** 2)
  w = w - w.min()
  w = w * (n / w.sum())
  return sigmas.astype(np.float32), w.astype(np.float32)


def sample_sigmas(key, batch: int, cfg: LossConfig) -> tuple[jax.Array, jax.Array]:
  """Noise levels s [B] in (0, 1] and loss weights [B] for one training batch."""
  if cfg.timesteps == "uniform_shifted":
    sigmas, weights = training_grid(cfg)
    index = jax.random.randint(key, (batch,), 0, cfg.num_train_timesteps)
    return jnp.asarray(sigmas)[index], jnp.asarray(weights)[index]
  s = jax.nn.sigmoid(jax.random.normal(key, (batch,), jnp.float32))
  return shift_sigma(s, cfg.k), jnp.ones((batch,), jnp.float32)


def noisy_latents(x0, noise, sigma):
  """x_s = (1 - s) x0 + s eps (sigma [B] broadcast over [B, F, H, W, C]) and the target eps - x0."""
  s = sigma.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
  return (1.0 - s) * x0 + s * noise, noise - x0


def weighted_mse(pred, target, weights):
  """Per-sample mean squared error, then the weighted mean over the batch (a scalar)."""
  err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  per_sample = jnp.mean(err.reshape(err.shape[0], -1), axis=-1)
  return jnp.mean(per_sample * weights)


def model_inputs(batch: Mapping[str, jax.Array], *, camera: bool, render: bool,
                 zero_camera: bool = False):
  """Keyword arguments of ``PostCamModel`` (bar latents/timesteps) from a training batch.

  ``camera`` / ``render``: whether this stage feeds the camera and the render (pose-only stage:
  no render; render-only stage: no camera). ``zero_camera`` feeds zeros as the camera (a probe of
  how much the model uses it).
  """
  if not camera and not render:
    raise ValueError("a stage must use the camera, the render, or both")
  if render and "render_latent" not in batch:
    raise ValueError(f"this stage uses the render, but the batch has no 'render_latent' "
                     f"(keys: {sorted(batch)})")
  cam = None
  if camera:
    cam = jnp.zeros_like(batch["camera"]) if zero_camera else batch["camera"]
  return dict(context=batch["text_embedding"], source_latents=batch["source_latent"],
              camera=cam, render_latents=batch["render_latent"] if render else None)


def draw_noise(key, shape, cfg: LossConfig, micro: tuple | None = None):
  """(sigma [B], weight [B], noise [B, ...]) of a batch of ``shape`` from ``key``.

  Every example draws its own timestep and noise from ``fold_in(key, r)``, r its row in the whole
  batch. ``micro = (index, count)``: the batch is micro-batch ``index`` (may be traced) of
  ``count`` equal parts of a whole batch (gradient accumulation): its rows are
  ``index * B .. index * B + B - 1``, so the micro-batches of a step draw, each for itself only,
  exactly the noise of one step on the whole batch.
  """
  b = shape[0]
  first = micro[0] * b if micro else 0
  rows = first + jnp.arange(b)

  def one(row):
    t_key, n_key = jax.random.split(jax.random.fold_in(key, row))
    sigma, weight = sample_sigmas(t_key, 1, cfg)
    return sigma[0], weight[0], jax.random.normal(n_key, shape[1:], jnp.float32)

  return jax.vmap(one)(rows)


def flow_matching_loss(model, batch, key, cfg: LossConfig, *, camera: bool = True,
                       render: bool = True, micro: tuple | None = None):
  """The training loss of one batch: (scalar loss, {"sigma_mean": ...}).

  ``batch`` holds ``target_latent`` (x0), ``source_latent``, ``text_embedding``, ``camera`` and,
  when ``render``, ``render_latent``. ``key`` draws the timesteps and the noise; ``micro``: see
  :func:`draw_noise`.
  """
  x0 = batch["target_latent"].astype(jnp.float32)
  sigma, weights, noise = draw_noise(key, x0.shape, cfg, micro)
  x_s, target = noisy_latents(x0, noise, sigma)
  inputs = model_inputs(batch, camera=camera, render=render)
  if cfg.condition_dropout == 0.0:
    pred = model(x_s, sigma * 1000.0, **inputs)
  else:
    if not camera:
      raise ValueError("condition_dropout zeroes the camera, but this stage feeds the render "
                       "only; use a schedule whose stages feed the camera, or condition_dropout 0")
    dropped = model_inputs(batch, camera=True, render=False, zero_camera=True)
    pred = jax.lax.cond(drops_conditions(key, cfg),
                        lambda: model(x_s, sigma * 1000.0, **dropped),
                        lambda: model(x_s, sigma * 1000.0, **inputs))
  return weighted_mse(pred, target, weights), {"sigma_mean": jnp.mean(sigma)}


# The row ``fold_in`` key of the step's condition dropout: one no example's noise ever uses.
DROPOUT_ROW = 2**32 - 1


def drops_conditions(key, cfg: LossConfig) -> jax.Array:
  """Whether the step of ``key`` trains without its conditions (a scalar bool). Drawn from the
  step's key alone, so every micro-batch of an accumulated step decides alike."""
  return jax.random.bernoulli(jax.random.fold_in(key, DROPOUT_ROW), cfg.condition_dropout)


def validation_loss(model, batch, key, sigmas, *, camera: bool = True, render: bool = True,
                    zero_camera: bool = False):
  """Unweighted flow-matching loss at each fixed noise level in ``sigmas`` -> [len(sigmas)].

  Deterministic for a fixed ``key`` (the same noise for every level), so runs and ablations are
  compared on identical inputs.
  """
  x0 = batch["target_latent"].astype(jnp.float32)
  noise = jax.random.normal(key, x0.shape, jnp.float32)
  inputs = model_inputs(batch, camera=camera, render=render, zero_camera=zero_camera)

  def one_level(s):  # lax.map: one compiled model call for every level
    sigma = jnp.full((x0.shape[0],), s, jnp.float32)
    x_s, target = noisy_latents(x0, noise, sigma)
    pred = model(x_s, sigma * 1000.0, **inputs)
    return weighted_mse(pred, target, jnp.ones_like(sigma))

  return jax.lax.map(one_level, jnp.asarray(sigmas, jnp.float32))
