"""Depth Anything 3 architectures as frozen dataclasses: one preset per file of the PyPI package's
``depth_anything_3/configs/`` (depth-anything-3 0.1.1).

``DA3Config.from_name("da3-large")`` returns the preset; ``DA3Config.from_dict`` / ``to_dict`` round
trip it through ``model.json``. A preset is a ``net`` (:class:`NetConfig`: a DINOv2 backbone, a
DPT/DualDPT head and, for the any-view models, the camera encoder/decoder) plus, for
``da3nested-giant-large`` only, a second ``metric`` net whose depth sets the metric scale.
"""

import dataclasses

VIT_WIDTHS = {"vits": (384, 6), "vitb": (768, 12), "vitl": (1024, 16), "vitg": (1536, 24)}
VIT_DEPTHS = {"vits": 12, "vitb": 12, "vitl": 24, "vitg": 40}
PRECISIONS = ("float32", "bfloat16")


def _tuple(v):
  return tuple(v) if isinstance(v, (list, tuple)) else v


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """The DINOv2 ViT with DA3's changes. ``-1`` disables alt/qknorm/rope, as in the package."""
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  ffn: str = "mlp"                 # mlp (GELU) | swiglu (vitg's SwiGLUFFNFused)
  out_layers: tuple[int, ...] = (5, 7, 9, 11)
  alt_start: int = 4               # from here odd blocks attend across views
  qknorm_start: int = 4            # LayerNorm on q and k per head from this block on
  rope_start: int = 4              # 2D RoPE (frequency 100) from this block on
  cat_token: bool = True           # features = [frame-local x, x]
  patch_size: int = 14
  pos_grid: int = 37               # stored position table: 518 / 14 = 37 x 37 patches
  rope_freq: float = 100.0

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def feature_dim(self) -> int:
    return 2 * self.embed_dim if self.cat_token else self.embed_dim

  @property
  def ffn_hidden(self) -> int:
    hidden = 4 * self.embed_dim
    if self.ffn == "swiglu":
      return (int(hidden * 2 / 3) + 7) // 8 * 8
    return hidden

  def qknorm(self, i: int) -> bool:
    return self.qknorm_start != -1 and i >= self.qknorm_start

  def rope(self, i: int) -> bool:
    return self.rope_start != -1 and i >= self.rope_start

  def is_global(self, i: int) -> bool:
    return self.alt_start != -1 and i >= self.alt_start and i % 2 == 1

  def validate(self):
    if self.embed_dim % self.num_heads:
      raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
    if self.ffn not in ("mlp", "swiglu"):
      raise ValueError(f"unknown ffn {self.ffn!r}; choose mlp or swiglu")
    if len(self.out_layers) != 4 or any(not 0 <= i < self.depth for i in self.out_layers):
      raise ValueError(f"out_layers must be 4 block indices in [0, {self.depth}); got "
                       f"{self.out_layers}")
    for name in ("alt_start", "qknorm_start", "rope_start"):
      v = getattr(self, name)
      if v != -1 and not 0 <= v < self.depth:
        raise ValueError(f"{name} must be -1 or a block index in [0, {self.depth}); got {v}")
    if self.alt_start == 1:
      raise ValueError("alt_start 1 is not supported (the release chooses the reference view "
                       "before block alt_start - 1 and needs a frame-local block before it)")
    if self.rope_start != -1 and self.head_dim % 4:
      raise ValueError(f"2D RoPE needs head_dim divisible by 4; got {self.head_dim}")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """``dualdpt`` (depth + confidence and the ray head) or ``dpt`` (depth [+ sky])."""
  kind: str = "dualdpt"
  features: int = 64
  out_channels: tuple[int, int, int, int] = (48, 96, 192, 384)
  output_dim: int = 2              # main head channels (dualdpt: depth + confidence)
  pos_embed: bool = True           # UV sinusoid added to the feature maps (dualdpt default)
  norm: bool = True                # LayerNorm on the tokens first (dualdpt; dpt uses identity)
  use_sky_head: bool = False       # dpt only
  aux_levels: int = 4              # dualdpt ray head: pyramid levels (only the last is output)

  def validate(self):
    if self.kind not in ("dualdpt", "dpt"):
      raise ValueError(f"unknown head kind {self.kind!r}; choose dualdpt or dpt")


@dataclasses.dataclass(frozen=True)
class NetConfig:
  """One DepthAnything3Net: backbone, head and (any-view models) the camera encoder/decoder."""
  backbone: BackboneConfig = BackboneConfig()
  head: HeadConfig = HeadConfig()
  camera: bool = True              # CameraEnc + CameraDec present
  cam_enc_heads: int = 16          # CameraEnc trunk: 4 blocks of this many heads
  cam_enc_depth: int = 4

  def validate(self):
    self.backbone.validate()
    self.head.validate()
    if self.camera and self.backbone.alt_start == -1:
      raise ValueError("the camera encoder/decoder needs the any-view backbone (alt_start != -1)")
    if self.camera and self.backbone.embed_dim % self.cam_enc_heads:
      raise ValueError(f"camera encoder width {self.backbone.embed_dim} is not divisible by "
                       f"{self.cam_enc_heads} heads")


def _vit(name: str, out_layers, alt: int, cat_token: bool, **kw) -> BackboneConfig:
  width, heads = VIT_WIDTHS[name]
  return BackboneConfig(embed_dim=width, depth=VIT_DEPTHS[name], num_heads=heads,
                        ffn="swiglu" if name == "vitg" else "mlp", out_layers=tuple(out_layers),
                        alt_start=alt, qknorm_start=alt, rope_start=alt, cat_token=cat_token, **kw)


def _anyview(name, out_layers, alt, features, out_channels) -> NetConfig:
  return NetConfig(backbone=_vit(name, out_layers, alt, True),
                   head=HeadConfig("dualdpt", features, tuple(out_channels), 2, True, True))


def _metric() -> NetConfig:
  return NetConfig(backbone=_vit("vitl", (4, 11, 17, 23), -1, False),
                   head=HeadConfig("dpt", 256, (256, 512, 1024, 1024), 1, pos_embed=False,
                                   norm=False, use_sky_head=True),
                   camera=False)


def _nets():
  giant = _anyview("vitg", (19, 27, 33, 39), 13, 256, (256, 512, 1024, 1024))
  return {
      "da3-small": (_anyview("vits", (5, 7, 9, 11), 4, 64, (48, 96, 192, 384)), None),
      "da3-base": (_anyview("vitb", (5, 7, 9, 11), 4, 128, (96, 192, 384, 768)), None),
      "da3-large": (_anyview("vitl", (11, 15, 19, 23), 8, 256, (256, 512, 1024, 1024)), None),
      "da3-giant": (giant, None),
      "da3metric-large": (_metric(), None),
      "da3mono-large": (_metric(), None),
      "da3nested-giant-large": (giant, _metric()),
  }


PRESETS = tuple(_nets())


@dataclasses.dataclass(frozen=True)
class DA3Config:
  """A DA3 model: ``net`` and, for the nested model, ``metric``; execution options.

  precision: float32 (exact, default) or bfloat16 (backbone matmuls and attention in bf16 with
  float32 parameters and residual; the head and camera decoder stay float32, as the release's
  autocast leaves them). remat: rematerialise each scanned block (none | full | dots).
  attention_chunk_bytes: the attention logits of one device are computed in query chunks of at
  most this many bytes (memory bound for long videos); head_chunk_bytes likewise bounds the frames
  the head processes at once.
  """
  model_name: str = "da3-small"
  net: NetConfig = NetConfig()
  metric: NetConfig | None = None
  precision: str = "float32"
  remat: str = "none"
  attention_chunk_bytes: int = 1 << 30
  head_chunk_bytes: int = 1 << 31

  @classmethod
  def from_name(cls, name: str, **kw) -> "DA3Config":
    nets = _nets()
    if name not in nets:
      raise ValueError(f"unknown DA3 model_name {name!r}; known: {', '.join(PRESETS)}")
    net, metric = nets[name]
    return cls(model_name=name, net=net, metric=metric, **kw)

  @property
  def nested(self) -> bool:
    return self.metric is not None

  def replace(self, **kw) -> "DA3Config":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "DA3Config":
    def net(n):
      if n is None:
        return None
      n = dict(n)
      backbone = {k: _tuple(v) for k, v in n.pop("backbone").items()}
      head = {k: _tuple(v) for k, v in n.pop("head").items()}
      return NetConfig(backbone=BackboneConfig(**backbone), head=HeadConfig(**head), **n)
    d = dict(d)
    return cls(net=net(d.pop("net")), metric=net(d.pop("metric", None)), **d)

  def __post_init__(self):
    if self.precision not in PRECISIONS:
      raise ValueError(f"unknown DA3 precision {self.precision!r}; choose one of {PRECISIONS}")
    if self.remat not in ("none", "full", "dots"):
      raise ValueError(f"unknown remat {self.remat!r}; choose none, full or dots")
    self.net.validate()
    if self.metric is not None:
      self.metric.validate()
      if self.metric.camera or self.metric.head.kind != "dpt" or not self.metric.head.use_sky_head:
        raise ValueError("the metric net of a nested model is a camera-less DPT net with a sky "
                         "head")
      if not self.net.camera:
        raise ValueError("the any-view net of a nested model needs the camera decoder")
