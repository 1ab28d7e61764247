"""Flow-matching samplers for PostCam: the release's Euler grid and Wan's UniPC, with text CFG.

``sample_latents(model, noise=..., source_latents=..., camera=..., render_latents=...,
context=..., negative_context=..., num_steps=50, guidance_scale=5.0)`` runs the whole denoising
loop as one jitted ``lax.fori_loop`` and returns the final latent [B, F, H, W, 16].

Conventions (``../shared/spec/postcam.md``, "The release's sampling defaults";
``wan2.1.md`` 3.1-3.5): x_s = (1 - s) x0 + s eps, the model sees t = 1000 s and returns
v = eps - x0, so x0 = x - s v.

- ``euler`` (the release, DiffSynth's ``FlowMatchScheduler``): s_i = shift(linspace(1, 0, N+1)
  [:-1]) with shift(s) = k s / (1 + (k - 1) s), all in float32 exactly as torch computes it;
  t_i = 1000 s_i (float); x += v (s_{i+1} - s_i) with s_N = 0.
- ``unipc`` (Wan's ``FlowUniPCMultistepScheduler``: order 2, bh2, predict_x0, lower_order_final):
  s_i = shift(linspace(0.999, 0, N+1)[:N]) in float64, then float32; t_i = floor(1000 s_i).
  Every UniPC update is a linear combination of the carried sample and the last three x0
  predictions; the coefficients depend only on the grid, so they are tabulated on the host in
  float64 (:func:`unipc_coefficients`) and the jitted loop only combines arrays.

Classifier-free guidance is on the text only: the conditional and unconditional branches share
the source, camera and render conditions and run as one 2B batch per step,
v = v_neg + g (v_pos - v_neg). Latents stay in the policy's residual dtype between steps (bf16 under
the release policy, where the model also casts t to bf16 itself).
"""

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from postcam_jax import parallel

SOLVERS = ("euler", "unipc")
UNIPC_SIGMA_MAX = float(np.float32(0.999))  # Wan's training table at shift 1: sigma_max = 0.999


# ----------------------------------------------------------------------------------------------
# Grids.

def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
  """torch.linspace(start, end, steps) in float32, bit for bit as torch's CPU kernel computes it.

  torch takes step = (end - start) / (steps - 1) in float32, then start + step i (lower half) and
  end - step (steps - 1 - i) (upper half) with one fused multiply-add each, i.e. one rounding. The
  product of a float32 and a small integer is exact in float64 and so is its sum with the float32
  end point here, so float64 arithmetic rounded once to float32 is the same fma.
  """
  start32, end32 = np.float32(start), np.float32(end)
  if steps == 1:
    return np.array([start32], np.float32)
  step = (end32 - start32) / np.float32(steps - 1)
  i = np.arange(steps, dtype=np.float64)
  lower = np.float64(step) * i + np.float64(start32)
  upper = np.float64(-step) * (steps - 1 - i) + np.float64(end32)
  return np.where(np.arange(steps) < steps // 2, lower, upper).astype(np.float32)


def _check_grid_args(num_steps, shift):
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  if not shift > 0:
    raise ValueError(f"shift must be > 0, got {shift!r}")


def timestep_grid(num_steps: int, shift: float = 5.0, solver: str = "euler"):
  """(timesteps [N], sigmas [N]) float32 numpy: what the model sees and the solver's noise levels.

  The sigma after the last step is 0 and is not listed (the fixture's and DiffSynth's layout).
  ``euler``: the release's grid (bit-exact to DiffSynth's torch float32 computation).
  ``unipc``: Wan's grid, timesteps floor(1000 sigma) as Wan feeds them (int64 there).
  """
  _check_grid_args(num_steps, shift)
  if solver == "euler":
    s = torch_linspace_f32(1.0, 0.0, num_steps + 1)[:-1]
    k = np.float32(shift)
    sigmas = (k * s / (np.float32(1.0) + (k - np.float32(1.0)) * s)).astype(np.float32)
    return (sigmas * np.float32(1000.0)).astype(np.float32), sigmas
  if solver == "unipc":
    s = np.linspace(UNIPC_SIGMA_MAX, 0.0, num_steps + 1)[:-1]
    shifted = shift * s / (1.0 + (shift - 1.0) * s)
    timesteps = np.floor(shifted * 1000.0).astype(np.float32)
    return timesteps, shifted.astype(np.float32)
  raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")


# ----------------------------------------------------------------------------------------------
# UniPC coefficient table.

@dataclasses.dataclass(frozen=True)
class UniPCTable:
  """Per-step coefficients [N] (float64 numpy) of Wan's UniPC (bh2, order 2, predict_x0).

  Step i, with the model's x0 prediction m_i at the (uncorrected) sample x_i:
    corrected x_i = keep x_i + c_last * last + c_m0 m_i + c_m1 m_{i-1} + c_m2 m_{i-2}
    x_{i+1} = p_x * corrected x_i + p_m0 m_i + p_m1 m_{i-1}
  where ``last`` is the corrected sample of step i - 1 (UniC, from step 1 on; UniP after it).
  """
  keep: np.ndarray
  c_last: np.ndarray
  c_m0: np.ndarray
  c_m1: np.ndarray
  c_m2: np.ndarray
  p_x: np.ndarray
  p_m0: np.ndarray
  p_m1: np.ndarray
  orders: np.ndarray  # predictor order per step (1 or 2)

  def as_array(self) -> np.ndarray:
    """[N, 8] float32 rows (keep, c_last, c_m0, c_m1, c_m2, p_x, p_m0, p_m1) for the jitted loop."""
    cols = (self.keep, self.c_last, self.c_m0, self.c_m1, self.c_m2, self.p_x, self.p_m0,
            self.p_m1)
    return np.stack(cols, axis=1).astype(np.float32)


def _bh2_b(hh: float, order: int) -> list[float]:
  """UniPC's right-hand side b_k (k = 1..order) for the bh2 variant (B(h) = expm1(hh))."""
  phi = math.expm1(hh)
  g = phi / hh - 1.0
  factorial = 1.0
  out = []
  for k in range(1, order + 1):
    out.append(g * factorial / phi)
    factorial *= k + 1
    g = g / hh - 1.0 / factorial
  return out


def unipc_coefficients(sigmas: np.ndarray, solver_order: int = 2) -> UniPCTable:
  """Tabulate Wan's UniPC updates for ``sigmas`` [N] (the last step goes to sigma 0).

  Follows ``wan2.1.md`` 3.5: alpha = 1 - sigma, lambda = ln alpha - ln sigma; the predictor order
  is min(solver_order, N - i, i + 1) (lower_order_final); the corrector at step i reuses the
  order of step i - 1's predictor; the order-2 predictor fixes rho = 0.5; the corrector solves
  R rho = b with R = [[1, 1], [r, 1]].
  """
  if solver_order not in (1, 2):
    raise ValueError(f"solver_order must be 1 or 2 (Wan uses 2), got {solver_order}")
  sig = np.concatenate([np.asarray(sigmas, np.float64), [0.0]])
  n = len(sigmas)
  if np.any(sig[:-1] <= 0) or np.any(sig[:-1] >= 1) or np.any(np.diff(sig) >= 0):
    raise ValueError(f"UniPC needs strictly decreasing sigmas in (0, 1); got {sigmas}")
  alpha = 1.0 - sig
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sig)  # +inf at sigma 0
  cols = {k: np.zeros(n) for k in ("keep", "c_last", "c_m0", "c_m1", "c_m2", "p_x", "p_m0",
                                   "p_m1")}
  orders = np.array([min(solver_order, n - i, i + 1) for i in range(n)])
  for i in range(n):
    if i == 0:
      cols["keep"][i] = 1.0
    else:  # UniC corrector from step i - 1 to i, with that step's predictor order
      q = orders[i - 1]
      h = lam[i] - lam[i - 1]
      hh = -h
      phi = math.expm1(hh)
      cols["c_last"][i] = sig[i] / sig[i - 1]
      cols["c_m1"][i] = -alpha[i] * phi
      if q == 1:
        rho_d, rho_t = 0.0, 0.5
        r = 1.0
      else:
        r = (lam[i - 2] - lam[i - 1]) / h
        b0, b1 = _bh2_b(hh, 2)
        rho_d = (b0 - b1) / (1.0 - r)   # solve [[1, 1], [r, 1]] rho = b
        rho_t = b0 - rho_d
      # x -= alpha B (rho_d (m_{i-2} - m_{i-1}) / r + rho_t (m_i - m_{i-1})), B = phi (bh2)
      scale = -alpha[i] * phi
      cols["c_m0"][i] = scale * rho_t
      cols["c_m1"][i] += -scale * rho_t - scale * rho_d / r
      cols["c_m2"][i] = scale * rho_d / r
    # UniP predictor from step i to i + 1.
    if sig[i + 1] == 0.0:  # lambda = inf: phi = -1, order 1, x_{i+1} = m_i exactly
      cols["p_m0"][i] = 1.0
      continue
    h = lam[i + 1] - lam[i]
    hh = -h
    phi = math.expm1(hh)
    cols["p_x"][i] = sig[i + 1] / sig[i]
    cols["p_m0"][i] = -alpha[i + 1] * phi
    if orders[i] == 2:
      r = (lam[i - 1] - lam[i]) / h
      coef = -alpha[i + 1] * phi * 0.5 / r   # - alpha B 0.5 (m_{i-1} - m_i) / r
      cols["p_m1"][i] = coef
      cols["p_m0"][i] -= coef
  return UniPCTable(**cols, orders=orders)


# ----------------------------------------------------------------------------------------------
# The guided velocity and one step.

def make_noise(seed: int, shape, dtype=jnp.float32) -> jax.Array:
  """Seeded standard-normal initial latent (float32 draw, then cast, as the release does)."""
  return jax.random.normal(jax.random.key(int(seed)), tuple(shape), jnp.float32).astype(dtype)


@dataclasses.dataclass(frozen=True)
class Conditions:
  """The model inputs shared by every step, already batched for CFG (2B rows when guided)."""
  source_latents: jax.Array
  camera: jax.Array | None
  render_latents: jax.Array | None
  context: jax.Array


jax.tree_util.register_dataclass(
    Conditions, data_fields=["source_latents", "camera", "render_latents", "context"],
    meta_fields=[])


def _pad_length(x, length):
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0)))


def batch_conditions(source_latents, camera, render_latents, context, negative_context,
                     guided: bool, dtype) -> Conditions:
  """Stack the positive and negative branches (2B) when ``guided``; the shared conditions are
  repeated. Contexts of different lengths are zero-padded to one length (the model zero-pads to
  text_len anyway, so this changes nothing)."""
  def cast(x):
    return None if x is None else jnp.asarray(x).astype(dtype)

  src, cam, ren = cast(source_latents), cast(camera), cast(render_latents)
  ctx = cast(context)
  if guided:
    neg = cast(negative_context)
    length = max(ctx.shape[1], neg.shape[1])
    ctx = jnp.concatenate([_pad_length(ctx, length), _pad_length(neg, length)], axis=0)
    src, cam, ren = (None if a is None else jnp.concatenate([a, a], axis=0)
                     for a in (src, cam, ren))
  return Conditions(src, cam, ren, ctx)


def guided_velocity(model, x, t, conds: Conditions, guidance_scale, guided: bool):
  """v = v_neg + g (v_pos - v_neg), in the latent dtype (one 2B forward when guided)."""
  b = x.shape[0]
  xs = jnp.concatenate([x, x], axis=0) if guided else x
  xs = parallel.constrain(xs, ("batch", None, None, None, None))
  ts = jnp.full((xs.shape[0],), t, jnp.float32)
  v = model(xs, ts, conds.context, conds.source_latents, conds.camera, conds.render_latents)
  v = v.astype(x.dtype)  # the release's DiT returns bf16 under its policy
  if not guided:
    return v
  v_pos, v_neg = v[:b], v[b:]
  g = jnp.asarray(guidance_scale, jnp.float32).astype(x.dtype)
  return v_neg + g * (v_pos - v_neg)


def euler_update(x, v, sigma, sigma_next):
  """The release's ``x + v (sigma_next - sigma)``: the product and the sum each rounded to the
  latent dtype, the step size kept in float32 (torch's bf16 tensor times a float32 scalar)."""
  d = (sigma_next - sigma).astype(jnp.float32)
  step = (v.astype(jnp.float32) * d).astype(x.dtype)
  return (x.astype(jnp.float32) + step.astype(jnp.float32)).astype(x.dtype)


def _euler_body(model, i, carry, conds, guidance_scale, guided, tables):
  timesteps, sigmas = tables
  x = carry[0]
  v = guided_velocity(model, x, timesteps[i], conds, guidance_scale, guided)
  sigma_next = jnp.where(i + 1 < sigmas.shape[0],
                         sigmas[jnp.minimum(i + 1, sigmas.shape[0] - 1)], 0.0)
  return (euler_update(x, v, sigmas[i], sigma_next),) + tuple(carry[1:])


def _unipc_body(model, i, carry, conds, guidance_scale, guided, tables):
  timesteps, sigmas, coef = tables
  x, last, m1, m2 = carry
  v = guided_velocity(model, x, timesteps[i], conds, guidance_scale, guided)
  f32 = jnp.float32
  m0 = x.astype(f32) - sigmas[i] * v.astype(f32)
  c = coef[i]
  corrected = c[0] * x.astype(f32) + c[1] * last + c[2] * m0 + c[3] * m1 + c[4] * m2
  x_next = c[5] * corrected + c[6] * m0 + c[7] * m1
  return x_next.astype(x.dtype), corrected, m0, m1


def solver_tables(num_steps: int, shift: float, solver: str):
  """Device arrays the step needs: (timesteps, sigmas) and for UniPC the [N, 8] coefficients."""
  timesteps, sigmas = timestep_grid(num_steps, shift, solver)
  tables = (jnp.asarray(timesteps), jnp.asarray(sigmas))
  if solver == "unipc":
    tables += (jnp.asarray(unipc_coefficients(sigmas).as_array()),)
  return tables


def initial_carry(noise, solver: str):
  """The solver's first carry; its arrays are the sampler's own (the steps donate them), so the
  caller's ``noise`` is copied, never consumed."""
  noise = jnp.array(noise, copy=True)
  if solver == "euler":
    return (noise,)
  # three separate buffers: a donated argument may not appear twice
  return (noise, *(jnp.zeros(noise.shape, jnp.float32) for _ in range(3)))


_BODIES = {"euler": _euler_body, "unipc": _unipc_body}


@jax.jit(static_argnames=("graphdef", "solver", "guided", "first", "count"),
         donate_argnames=("carry",))
def _run_steps(graphdef, state, carry, conds, guidance_scale, tables, *, solver, guided, first,
               count):
  """Steps first .. first + count - 1 (a fori_loop), the model merged once inside the trace. The
  carry is donated: the loop updates the latents in place of the input's buffers."""
  model = nnx.merge(graphdef, state)
  body = _BODIES[solver]

  def step(i, c):
    return body(model, i, c, conds, guidance_scale, guided, tables)

  return jax.lax.fori_loop(first, first + count, step, carry)


# Every carried latent [B, F, H, W, C] is laid out like the model's batch.
CARRY_AXES = ("batch", None, None, None, None)


def _constrain_carry(carry):
  return tuple(parallel.constrain(c, CARRY_AXES) for c in carry)


def place_carry(carry, state):
  """Commit the initial carry where :func:`run_one_step` leaves its output: on the mesh with
  ``CARRY_AXES`` under a mesh context, else on the model's device. The first step then sees the
  same argument shardings as every later one and shares their compiled program (an uncommitted
  first carry would compile the step twice)."""
  mesh = jax.sharding.get_mesh()
  if mesh is not None and not mesh.empty:
    shardings = tuple(NamedSharding(mesh, parallel.fit_spec(parallel.logical_to_spec(CARRY_AXES),
                                                             c.shape, mesh)) for c in carry)
    return tuple(parallel.put_global(list(carry), list(shardings)))
  devices = {d for leaf in jax.tree.leaves(state) for d in leaf.devices()}
  if len(devices) != 1:  # parameters sharded without a mesh context: XLA places the carry
    return carry
  return jax.device_put(carry, devices.pop())


@jax.jit(static_argnames=("graphdef", "solver", "guided"), donate_argnames=("carry",))
def run_one_step(graphdef, state, carry, conds, guidance_scale, tables, i, *, solver, guided):
  """One step with a traced index: one compile serves every step of every video (with the
  carry placed by :func:`place_carry`). The carry is donated: step i + 1 writes into step i's
  buffers, so a video holds one set of latents, not one per step in flight."""
  model = nnx.merge(graphdef, state)
  return _constrain_carry(_BODIES[solver](model, i, carry, conds, guidance_scale, guided, tables))


# ----------------------------------------------------------------------------------------------
# Public API.

def _check_inputs(noise, source_latents, camera, render_latents, context, negative_context,
                  guided, solver):
  if solver not in SOLVERS:
    raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
  if noise.ndim != 5:
    raise ValueError(f"noise must be [B, F, H, W, C] (channels-last); got {tuple(noise.shape)}")
  if tuple(source_latents.shape) != tuple(noise.shape):
    raise ValueError(f"source_latents {tuple(source_latents.shape)} must have the noise's shape "
                     f"{tuple(noise.shape)}")
  if camera is None and render_latents is None:
    raise ValueError("PostCam needs a camera, a render, or both (got neither)")
  if guided and negative_context is None:
    raise ValueError("guidance_scale != 1 needs negative_context (the negative prompt's states); "
                     "pass it, or guidance_scale=1.0 to sample without guidance")
  for name, ctx in (("context", context), ("negative_context", negative_context)):
    if ctx is not None and (ctx.ndim != 3 or ctx.shape[0] != noise.shape[0]):
      raise ValueError(f"{name} must be [B={noise.shape[0]}, L, text_dim]; got "
                       f"{tuple(ctx.shape)}")


class Sampler:
  """Denoising loop for one model, reusable across videos: the compiled step is cached by shape.

  ``sample(...)`` takes the arguments of :func:`sample_latents`; ``progress`` (a callable taking
  the step index) makes it step-by-step (one jitted step per Python iteration) instead of one
  jitted loop.
  """

  def __init__(self, model):
    self.graphdef, self.state = nnx.split(model)
    self.dtype = model.cfg.policy.residual_dtype

  def sample(self, *, noise, source_latents, camera, render_latents, context, negative_context,
             num_steps: int, guidance_scale: float, shift: float = 5.0, solver: str = "euler",
             progress: Callable[[int], None] | None = None) -> jax.Array:
    guided = float(guidance_scale) != 1.0
    _check_inputs(noise, source_latents, camera, render_latents, context, negative_context,
                  guided, solver)
    tables = solver_tables(num_steps, shift, solver)
    conds = batch_conditions(source_latents, camera, render_latents, context, negative_context,
                             guided, self.dtype)
    carry = initial_carry(jnp.asarray(noise).astype(self.dtype), solver)
    g = jnp.float32(guidance_scale)
    if progress is None:
      carry = _run_steps(self.graphdef, self.state, carry, conds, g, tables, solver=solver,
                         guided=guided, first=0, count=int(num_steps))
    else:
      carry = place_carry(carry, self.state)
      for i in range(int(num_steps)):
        carry = run_one_step(self.graphdef, self.state, carry, conds, g, tables, jnp.int32(i),
                              solver=solver, guided=guided)
        progress(i)
    return carry[0]


def sample_latents(model, *, noise, source_latents, camera, render_latents, context,
                   negative_context, num_steps: int, guidance_scale: float, shift: float = 5.0,
                   solver: str = "euler") -> jax.Array:
  """Denoise ``noise`` [B, F, H, W, 16] into the target latent, the whole loop in one jit.

  Inputs are channels-last as the model takes them: ``source_latents`` like ``noise``,
  ``camera`` [B, 11, 12] (or [B, 11, 4, 4]), ``render_latents`` [B, F, h, w, 16] or None,
  ``context``/``negative_context`` [B, L, text_dim] text states. ``guidance_scale`` 1 skips the
  negative branch. ``solver``: ``euler`` (the release) or ``unipc`` (Wan). Under a mesh
  (``jax.set_mesh``) the CFG batch is sharded on the data axes and the model as its parameters are.
  """
  return Sampler(model).sample(
      noise=noise, source_latents=source_latents, camera=camera, render_latents=render_latents,
      context=context, negative_context=negative_context, num_steps=num_steps,
      guidance_scale=guidance_scale, shift=shift, solver=solver)
