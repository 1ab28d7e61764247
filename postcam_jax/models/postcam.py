"""PostCam on the Wan2.1 DiT, as the authors' inference release computes it.

``v = PostCamModel(cfg, rngs=...)(latents, timesteps, context, source_latents, camera,
render_latents=None)`` returns the target's float32 velocity [B, F, H, W, 16]. Every release
detail is in ``../shared/spec/postcam.md`` ("The model"); the quirks reproduced here:
text cross-attention on the target half only; render keys/values from the block's modulated render
input; the render stream through the block's own self-attention and FFN; a 1-D RoPE over the whole
head_dim on camera keys; the release's render-RoPE mapping (h and w crossed); exact GELU in the
camera encoder; the patch embedding flooring odd render grids.

The model extends the Wan modules (``WanBlock``, ``WanModel``); the stage (pose only or joint) is
an input, not a different parameter tree. Ablations that add modules have their own trees.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postcam_jax import parallel
from postcam_jax.geometry import cameras
from postcam_jax.models import layers
from postcam_jax.models.attention import attention
from postcam_jax.models.wan import Attention, WanBlock, WanConfig, WanModel, scan_blocks

# variant -> how the camera/render conditions enter each block (postcam.md, ablation table).
VARIANTS = {
    "query_shared": "one q; camera and render keys/values under one softmax (the release)",
    "kv_sum": "one q; separate softmaxes for camera and render, summed before o (wo_kv_concat)",
    "separate": "two cross-attentions with own q/k/v/o/norms/projector (wo_query_shared, "
                "baseline_rt_render)",
    "plucker_add": "Plucker embedding added to the target tokens; render through its own "
                   "cross-attention (baseline_plucker_render)",
}
CAMERA_INPUTS = ("rt", "plucker")
RENDER_ROPES = ("release", "aligned")
# stage -> which conditions the model reads (postcam.md, "Stages"): the tree is the same for all.
STAGES = ("joint", "pose", "render_only")
# 6-D ray (o x d, d) for each of the 4 frames a latent frame covers (cameras.plucker_tokens).
PLUCKER_DIM = cameras.PLUCKER_WIDTH


@dataclasses.dataclass(frozen=True)
class PostCamConfig(WanConfig):
  camera_hidden: int = 256
  camera_input: str = "rt"          # rt: 11 world-to-camera 3x4 tokens; plucker: rays per target
                                    # token, [B, N, 24] from cameras.plucker_tokens
  variant: str = "query_shared"
  render_rope: str = "release"      # release: the released (h/w crossed) mapping; aligned
  stage: str = "joint"              # joint: pose + render; pose: render ignored; render_only

  def __post_init__(self):
    super().__post_init__()
    for name, value, allowed in (("variant", self.variant, VARIANTS),
                                 ("camera_input", self.camera_input, CAMERA_INPUTS),
                                 ("render_rope", self.render_rope, RENDER_ROPES),
                                 ("stage", self.stage, STAGES)):
      if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(allowed)}")

  @property
  def plucker(self) -> bool:
    """Whether the camera input is Plucker rays per target token (else 11 RT tokens)."""
    return self.camera_input == "plucker" or self.variant == "plucker_add"

  @property
  def camera_width(self) -> int:
    return PLUCKER_DIM if self.plucker else 12

  # The release builds on Wan2.1-T2V; its sizes are the backbone's.
  @classmethod
  def release_1_3b(cls, **kw):
    return cls.t2v_1_3b(**kw)

  @classmethod
  def release_14b(cls, **kw):
    return cls.t2v_14b(**kw)

  @classmethod
  def tiny(cls, **kw):
    # The golden fixtures' tiny release model keeps Wan's 512-token text length.
    return super().tiny(**{"text_len": 512, **kw})


class QuerySharedCrossAttention(Attention):
  """The release's ``cross_attn_cam``: a query from the target tokens, camera keys/values from
  (q, k, v) and render keys/values from (k_render, v_render), one softmax over both, then o."""

  def __init__(self, dim, num_heads, *, eps, policy, rngs):
    super().__init__(dim, num_heads, eps=eps, policy=policy, rngs=rngs)
    self.k_render = layers.linear(dim, dim, ("embed", "qkv"), policy=policy, rngs=rngs)
    self.v_render = layers.linear(dim, dim, ("embed", "qkv"), policy=policy, rngs=rngs)

  def __call__(self, y, camera_tokens, render_in, *, q_rope, camera_rope, render_rope,
               combine="concat"):
    q = self.queries(y, q_rope)
    kv = []
    if camera_tokens is not None:
      kv.append(self.keys_values(camera_tokens, camera_rope))
    if render_in is not None:
      kv.append(self.keys_values(render_in, render_rope, self.k_render, self.v_render))
    prec = self.policy.matmul_precision
    if combine == "concat" or len(kv) == 1:
      k = jnp.concatenate([k for k, _ in kv], axis=1)
      v = jnp.concatenate([v for _, v in kv], axis=1)
      o = attention(q, k, v, precision=prec)
    else:  # wo_kv_concat: one softmax per condition, outputs summed before o
      o = sum(attention(q, k, v, precision=prec) for k, v in kv)
    return self.output(o)


class CameraEncoder(nnx.Module):
  """Linear -> GELU(exact) x3 -> Linear(dim) -> affine LayerNorm (release ``cam_encoder``)."""

  def __init__(self, cfg: PostCamConfig, *, rngs):
    p = cfg.policy
    h = cfg.camera_hidden
    widths = [cfg.camera_width, h, h, h, cfg.dim]
    names = [("camera_in", "camera_in")] * 3 + [("camera_in", "embed")]
    self.linears = nnx.List([
        layers.linear(widths[i], widths[i + 1], names[i], policy=p, rngs=rngs) for i in range(4)])
    self.norm = layers.LayerNorm(cfg.dim, eps=cfg.eps, affine=True, policy=p,
                                 out_dtype=p.residual_dtype)

  def __call__(self, camera):
    x = camera
    for i, lin in enumerate(self.linears):
      x = lin(x)
      if i < 3:
        x = jax.nn.gelu(x, approximate=False)
    return self.norm(x)


def _zero_linear(cfg, rngs, din=None):
  return layers.linear(din or cfg.dim, cfg.dim, ("embed", "embed"), policy=cfg.policy, rngs=rngs,
                       kernel_init=nnx.initializers.zeros_init())


class PostCamBlock(WanBlock):
  """A Wan block plus the camera/render conditioning of the chosen variant."""

  def __init__(self, cfg: PostCamConfig, *, rngs):
    super().__init__(cfg, rngs=rngs)
    p = cfg.policy
    kw = dict(eps=cfg.eps, policy=p, rngs=rngs)
    if cfg.variant in ("query_shared", "kv_sum"):
      self.cross_attn_cam = QuerySharedCrossAttention(cfg.dim, cfg.num_heads, **kw)
      self.projector = _zero_linear(cfg, rngs)  # zero: the paper's init for training
    if cfg.variant == "separate":
      self.cam_attn = Attention(cfg.dim, cfg.num_heads, **kw)
      self.cam_projector = _zero_linear(cfg, rngs)
    if cfg.variant in ("separate", "plucker_add"):
      self.render_attn = Attention(cfg.dim, cfg.num_heads, **kw)
      self.render_projector = _zero_linear(cfg, rngs)

  @jax.named_scope("camera_render_attn")
  def condition_update(self, y, camera_tokens, render_in, ropes):
    """The projected camera/render update of the target tokens (LN3 output ``y``)."""
    cfg = self.cfg
    rope_kw = dict(q_rope=ropes["target"], camera_rope=ropes.get("camera"),
                   render_rope=ropes.get("render"))
    if cfg.variant in ("query_shared", "kv_sum"):
      out = self.cross_attn_cam(y, camera_tokens, render_in,
                                combine="concat" if cfg.variant == "query_shared" else "sum",
                                **rope_kw)
      return self.projector(out)
    branches = []  # (attention, projector, keys/values input, their RoPE), outputs added
    if cfg.variant == "separate" and camera_tokens is not None:
      branches.append((self.cam_attn, self.cam_projector, camera_tokens, ropes.get("camera")))
    if render_in is not None:
      branches.append((self.render_attn, self.render_projector, render_in, ropes["render"]))
    update = None
    for attn, projector, kv_in, kv_rope in branches:
      out = self.projected_cross_attention(attn, projector, y, kv_in, ropes["target"], kv_rope)
      update = out if update is None else update + out
    return update

  def projected_cross_attention(self, attn, projector, y, kv_in, q_rope, kv_rope):
    """projector(o(softmax(q k^T / sqrt(d)) v)): queries from ``y`` with the target's RoPE,
    keys/values from ``kv_in`` with theirs (one cross-attention of the ablation variants)."""
    q = attn.queries(y, q_rope)
    k, v = attn.keys_values(kv_in, kv_rope)
    return projector(attn.output(attention(q, k, v, precision=self.cfg.policy.matmul_precision)))

  def __call__(self, carry, e0, context, camera_tokens, ropes):
    x, r = carry
    mod = self.modulation_vectors(e0)
    x, _ = self.self_attention_update(x, mod, ropes["main"])
    render_in = None
    if r is not None:  # the render stream: same self-attention and modulation, own RoPE
      with jax.named_scope("render_stream"):
        r, render_in = self.self_attention_update(r, mod, ropes["render"])
    n = x.shape[1] // 2
    target = x[:, :n]
    y = self.norm3(target)
    cond = self.condition_update(y, camera_tokens, render_in, ropes)
    if cond is not None:
      target = target + cond.astype(x.dtype)
    target = target + self.text_update(y, context).astype(x.dtype)  # target half only (quirk)
    x = jnp.concatenate([target, x[:, n:]], axis=1)
    x = self.ffn_update(x, mod)
    x = parallel.constrain(x, ("batch", "length", "act_embed"))
    if r is not None:
      with jax.named_scope("render_stream"):
        r = self.ffn_update(r, mod)
    return x, r


def render_positions(target_hw, render_grid, mode="release"):
  """Target-grid (row, col) positions of the render tokens.

  release: s = min(W' // h_r, H' // w_r) (h and w crossed, as released), offsets
  sh = (H' - s h_r) // 2, sw = (W' - s w_r) // 2; token (i, j) -> (sh + s i, sw + s j).
  aligned: the same with s = min(H' // h_r, W' // w_r).

  Raises ValueError, naming the fix, when the mapping does not fit: a scale below 1, or positions
  outside the target grid. The release's crossed scale can exceed H' // h_r (or W' // w_r) and
  give negative offsets (a 3x2 render grid on a 4x12 target grid: rows -1, 1, 3). A render latent
  4x smaller than the target's, the release's setting, always fits.
  """
  th, tw = target_hw
  _, rh, rw = render_grid
  fix = (f"use a render latent 4x smaller than the target's (e.g. [F, {th // 2}, {tw // 2}] for "
         f"a {th}x{tw} token grid)")
  if mode == "release":
    s = min(tw // rh, th // rw)
    if s < 1:
      raise ValueError(
          f"render token grid {rh}x{rw} gets scale 0 in the release's render-RoPE mapping on the "
          f"target token grid {th}x{tw} (s = min(W' // h_r, H' // w_r) = min({tw} // {rh}, "
          f"{th} // {rw}): h and w crossed, as released); {fix} or render_rope='aligned'")
  else:
    s = min(th // rh, tw // rw)
    if s < 1:
      raise ValueError(f"render token grid {rh}x{rw} is larger than the target token grid "
                       f"{th}x{tw}; {fix}")
  sh, sw = (th - s * rh) // 2, (tw - s * rw) // 2
  rows, cols = np.arange(rh) * s + sh, np.arange(rw) * s + sw
  if rows[0] < 0 or cols[0] < 0 or rows[-1] >= th or cols[-1] >= tw:
    raise ValueError(
        f"render token grid {rh}x{rw} does not fit the release's render-RoPE mapping on the "
        f"target token grid {th}x{tw}: scale {s} and offsets ({sh}, {sw}) put rows at "
        f"{rows[0]}..{rows[-1]} and columns at {cols[0]}..{cols[-1]}, outside 0..{th - 1} x "
        f"0..{tw - 1}; {fix} or render_rope='aligned'")
  return rows, cols


class PostCamModel(WanModel):
  """PostCam: Wan2.1 + camera encoder + per-block query-shared cross-attention + render stream."""

  def __init__(self, cfg: PostCamConfig, *, rngs):
    super().__init__(cfg, rngs=rngs)
    if cfg.variant == "plucker_add":
      self.plucker_embedding = layers.linear(
          PLUCKER_DIM, cfg.dim, ("camera_in", "embed"), policy=cfg.policy, rngs=rngs,
          dtype=cfg.policy.residual_dtype, kernel_init=nnx.initializers.zeros_init())
    else:
      self.cam_encoder = CameraEncoder(cfg, rngs=rngs)

  def make_block(self, rngs):
    return PostCamBlock(self.cfg, rngs=rngs)

  def check_camera(self, camera, batch, target_tokens):
    cfg = self.cfg
    if not cfg.plucker:
      camera = cameras.as_camera_tokens(camera)
      if camera.shape[0] != batch or camera.shape[1] != cameras.NUM_CAMERA_TOKENS:
        raise ValueError(
            f"camera must be [B={batch}, {cameras.NUM_CAMERA_TOKENS}, 12]: one world-to-camera "
            f"pose per latent frame (the release's 11 frames); got {tuple(camera.shape)}. Pick "
            f"the 11 frames with postcam_jax.geometry.cameras.camera_tokens")
      return camera
    want = (batch, target_tokens, PLUCKER_DIM)
    if tuple(camera.shape) != want:
      raise ValueError(f"camera_input='plucker' needs Plucker rays per target token {want}, made "
                       f"by postcam_jax.geometry.cameras.plucker_tokens(target_w2c, intrinsics, "
                       f"latent_shape); got {tuple(camera.shape)} (width {camera.shape[-1]}: a "
                       f"12-wide camera is the 'rt' representation)")
    return camera

  def __call__(self, latents, timesteps, context, source_latents, camera, render_latents=None):
    cfg = self.cfg
    if cfg.stage == "pose":  # stage 1 (paper eq. 6): the render stream is not computed
      render_latents = None
    elif cfg.stage == "render_only":
      camera = None
    b = latents.shape[0]
    self.check_latents(latents)
    self.check_latents(source_latents, "source_latents")
    if source_latents.shape != latents.shape:
      raise ValueError(f"source_latents {tuple(source_latents.shape)} and latents "
                       f"{tuple(latents.shape)} must have the same shape (source and target are "
                       f"concatenated on the frame axis)")
    self.check_timesteps(timesteps, b)
    self.check_context(context, b)
    if render_latents is not None and (render_latents.ndim != 5 or
                                       render_latents.shape[0] != b or
                                       render_latents.shape[1] != latents.shape[1] or
                                       render_latents.shape[-1] != cfg.in_dim):
      raise ValueError(f"render_latents must be [B={b}, F={latents.shape[1]}, h, w, "
                       f"{cfg.in_dim}]; got {tuple(render_latents.shape)}")

    e, e0 = self.embed_time(timesteps)
    ctx = self.embed_text(context)
    x, grid = self.embed_latents(jnp.concatenate([latents, source_latents], axis=1))
    f2, th, tw = grid
    n = (f2 // 2) * th * tw
    main_rope = self.rope_for_grid(grid)
    ropes = {"main": main_rope, "target": main_rope[:n]}
    if camera is None:
      camera_tokens = None
    else:
      camera = self.check_camera(camera, b, n)
      if cfg.variant == "plucker_add":
        x = jnp.concatenate([x[:, :n] + self.plucker_embedding(camera).astype(x.dtype),
                             x[:, n:]], axis=1)
        camera_tokens = None
      else:
        camera_tokens = self.cam_encoder(camera)
        ropes["camera"] = (layers.rope_1d(jnp.arange(camera_tokens.shape[1]), cfg.head_dim)
                           if not cfg.plucker else ropes["target"])
    r = None
    if render_latents is not None:
      r, rgrid = self.embed_latents(render_latents)
      rows, cols = render_positions((th, tw), rgrid, cfg.render_rope)
      ropes["render"] = layers.rope_grid(jnp.arange(rgrid[0]), rows, cols, cfg.head_dim)
    if camera_tokens is None and r is None and cfg.variant != "plucker_add":
      raise ValueError("PostCam needs a camera, a render, or both (got neither)")

    def body(block, carry):
      return block(carry, e0, ctx, camera_tokens, ropes)

    x, _ = scan_blocks(self.blocks, (x, r), body, cfg.remat)
    y = self.head(x[:, :n], e)
    return self.unpatchify(y, (f2 // 2, th, tw))


# ----------------------------------------------------------------------------------------------
# Trainable parameters (paper 3.5): each block's self-attention, the camera encoder, every QS
# module and projector (and the extra modules of the ablations). Everything else is frozen.

TRAINABLE_PATHS = ("self_attn", "cam_encoder", "cross_attn_cam", "projector", "cam_attn",
                   "cam_projector", "render_attn", "render_projector", "plucker_embedding")

trainable = nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(p) for p in TRAINABLE_PATHS)))
frozen = nnx.All(nnx.Param, nnx.Not(trainable))


def parameter_report(model) -> dict[str, int]:
  """Trainable and frozen parameter counts."""
  def count(f):
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, f))))
  t, fz = count(trainable), count(frozen)
  return {"total": t + fz, "trainable": t, "frozen": fz}
