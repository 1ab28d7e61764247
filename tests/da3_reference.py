"""The PyTorch Depth Anything 3 reference (PyPI ``depth-anything-3==0.1.1``) for the DA3 tests.

Test/benchmark-only: the package is never imported by ``postcam_jax``. What this harness does
around it, and why:

- ``depth_anything_3.api`` imports export back-ends at import time (moviepy, pycolmap, trimesh,
  imageio, evo, matplotlib, plyfile) for formats the tests never write: placeholder modules stand
  in for exactly those third-party imports, and nothing of them is ever called.
- torchvision's wheel (0.28.0) registers fake kernels for its C++ ops at import, which fails
  against this CPU torch build ("operator torchvision::nms does not exist"); its
  ``_meta_registrations`` module is replaced by an empty placeholder. The transforms the release
  uses (ToTensor, Normalize) are pure torch code and run unchanged.
- OpenCV: its wheels hand ``INTER_CUBIC`` on uint8 to Intel IPP, which differs from OpenCV's own
  kernel by one grey level on ~2% of values (see ``da3_preprocess_test.py``). :func:`no_ipp` turns
  IPP off; that switch is thread-local in OpenCV, so the input processor of :class:`Float32DA3`
  runs its per-image work in the calling thread (``sequential=True``: the same function, without
  the thread pool).
- Float32: ``DepthAnything3.forward`` wraps the network in ``torch.autocast`` (bf16/fp16).
  :class:`Float32DA3` overrides that one method to call the same network without the autocast
  context, so ``inference()`` (preprocessing, network, output processing) runs in float32.

Models are built by the package's own constructors: presets by name, and shrunk variants (fewer or
narrower blocks) from the package's classes (``DinoVisionTransformer``, ``DualDPT``, ``DPT``,
``CameraEnc``, ``CameraDec``, ``DepthAnything3Net``), never from copied code.
"""

import contextlib
import functools
import importlib.util
import sys
import types

import numpy as np
from flax import nnx

from postcam_jax.convert import common
from postcam_jax.convert import da3 as convert_da3
from postcam_jax.io import model_dir
from postcam_jax.models.da3 import DA3Config, DA3Model
from postcam_jax.models.da3.config import NetConfig

_EXPORT_MODULES = ("moviepy", "moviepy.editor", "pycolmap", "trimesh", "imageio", "evo",
                   "evo.core", "evo.core.trajectory", "matplotlib", "plyfile")


def _placeholder(name: str) -> types.ModuleType:
  module = types.ModuleType(name)

  def attribute(attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    return type(attr, (), {})

  module.__getattr__ = attribute
  return module


@functools.cache
def da3():
  """The imported package as a namespace: api, nets, heads, camera modules."""
  sys.modules.setdefault("torchvision._meta_registrations",
                         types.ModuleType("torchvision._meta_registrations"))
  # Only for what is not installed: a placeholder for an installed module (matplotlib, a
  # runtime dependency) would leak into every later test of this process. The installed set is
  # decided before any placeholder exists (find_spec refuses a placeholder parent package).
  missing = {n.split(".")[0] for n in _EXPORT_MODULES
             if n.split(".")[0] not in sys.modules and importlib.util.find_spec(
                 n.split(".")[0]) is None}
  for name in _EXPORT_MODULES:
    if name.split(".")[0] in missing and name not in sys.modules:
      sys.modules[name] = _placeholder(name)
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(1)
  from depth_anything_3 import api  # pylint: disable=import-outside-toplevel
  from depth_anything_3.model import (  # pylint: disable=import-outside-toplevel
                                      cam_dec,
                                      cam_enc,
                                      da3,
                                      dpt,
                                      dualdpt,
  )
  from depth_anything_3.model.dinov2 import (  # pylint: disable=import-outside-toplevel
                                             dinov2,
                                             vision_transformer,
  )

  class SequentialInput(api.InputProcessor):
    """The release's input processor, per-image work in the calling thread."""

    def __call__(self, *args, **kwargs):
      kwargs["sequential"] = True
      return super().__call__(*args, **kwargs)

  class Float32DA3(api.DepthAnything3):
    """DepthAnything3 whose forward runs the network without autocast (float32)."""

    def __init__(self, net, model_name="custom"):
      torch.nn.Module.__init__(self)
      self.model_name = model_name
      self.model = net.eval()
      self.input_processor = SequentialInput()
      self.output_processor = api.OutputProcessor()
      self.device = None

    def forward(self, image, extrinsics=None, intrinsics=None, export_feat_layers=None,
                infer_gs=False, use_ray_pose=False, ref_view_strategy="saddle_balanced"):
      with torch.no_grad():
        return self.model(image, extrinsics, intrinsics, export_feat_layers, infer_gs,
                          use_ray_pose, ref_view_strategy)

  return types.SimpleNamespace(torch=torch, api=api, da3=da3, dinov2=dinov2, dpt=dpt,
                               dualdpt=dualdpt, cam_dec=cam_dec, cam_enc=cam_enc,
                               vit=vision_transformer, Float32DA3=Float32DA3,
                               SequentialInput=SequentialInput)


@contextlib.contextmanager
def no_ipp():
  """OpenCV without Intel IPP in this thread (OpenCV's own resize kernels)."""
  import cv2  # pylint: disable=import-outside-toplevel
  before = cv2.ipp.useIPP()
  cv2.ipp.setUseIPP(False)
  try:
    yield
  finally:
    cv2.ipp.setUseIPP(before)


def _torch_net(cfg: NetConfig):
  """A DepthAnything3Net of ``cfg`` (any size) from the package's classes."""
  m = da3()
  b = cfg.backbone
  backbone = m.dinov2.DinoV2(name="vits", out_layers=list(b.out_layers), alt_start=b.alt_start,
                             qknorm_start=b.qknorm_start, rope_start=b.rope_start,
                             cat_token=b.cat_token)
  backbone.pretrained = m.vit.DinoVisionTransformer(
      img_size=518, patch_size=14, embed_dim=b.embed_dim, depth=b.depth, num_heads=b.num_heads,
      mlp_ratio=4, ffn_layer="swiglufused" if b.ffn == "swiglu" else "mlp",
      alt_start=b.alt_start, qknorm_start=b.qknorm_start, rope_start=b.rope_start,
      cat_token=b.cat_token)
  h = cfg.head
  if h.kind == "dualdpt":
    head = m.dualdpt.DualDPT(dim_in=b.feature_dim, output_dim=h.output_dim, features=h.features,
                             out_channels=list(h.out_channels))
  else:
    head = m.dpt.DPT(dim_in=b.feature_dim, output_dim=h.output_dim, features=h.features,
                     out_channels=list(h.out_channels))
  dec = enc = None
  if cfg.camera:
    dec = m.cam_dec.CameraDec(dim_in=b.feature_dim)
    enc = m.cam_enc.CameraEnc(dim_out=b.embed_dim, num_heads=cfg.cam_enc_heads)
  return m.da3.DepthAnything3Net(backbone, head, cam_dec=dec, cam_enc=enc)


def build_torch(cfg: DA3Config, *, seed: int = 0, noise: float = 0.02, preset: bool = False):
  """(Float32DA3 model, numpy state dict) for ``cfg``: the package's preset by
  ``cfg.model_name`` (``preset=True``) or the same architecture assembled from its classes;
  seeded torch init plus ``noise`` x N(0, 1) per parameter (registration order)."""
  m = da3()
  torch = m.torch
  torch.manual_seed(seed)
  if preset:
    net = m.api.DepthAnything3(model_name=cfg.model_name).model
  elif cfg.metric is None:
    net = _torch_net(cfg.net)
  else:
    net = m.da3.NestedDepthAnything3Net.__new__(m.da3.NestedDepthAnything3Net)
    torch.nn.Module.__init__(net)
    net.da3 = _torch_net(cfg.net)
    net.da3_metric = _torch_net(cfg.metric)
  model = m.Float32DA3(net, cfg.model_name)
  add_noise(model, seed + 1, noise)
  return model, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def add_noise(model, seed: int, scale: float):
  torch = da3().torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def jax_model(cfg: DA3Config, state: dict) -> DA3Model:
  """The Flax model with the torch weights, through the converter's key table (in memory)."""
  abstract = model_dir.abstract_params(lambda: DA3Model(cfg, rngs=nnx.Rngs(0)))
  rules, ignore = convert_da3.rules_for(cfg)
  source = convert_da3.table_source(common.DictSource(state), cfg)
  flat = common.convert_tensors(source, rules, abstract, ignore=ignore)
  model = nnx.eval_shape(lambda: DA3Model(cfg, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  nnx.replace_by_pure_dict(params, model_dir.unflatten(flat))
  return nnx.merge(graphdef, params, rest)


def net_forward(model, images, *, extrinsics=None, intrinsics=None,
                ref_view_strategy="saddle_balanced"):
  """The raw network (``model.model``) on images [B, S, H, W, 3] (normalised): numpy outputs,
  plus ``ref_view`` (the index ``select_reference_view`` returned, -1 if it was not called)."""
  m = da3()
  torch = m.torch
  chosen = []
  original = m.vit.select_reference_view

  def recording(x, strategy="saddle_balanced"):
    idx = original(x, strategy=strategy)
    chosen.append(idx.numpy().copy())
    return idx

  x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, 2))).float()
  ext = None if extrinsics is None else torch.from_numpy(extrinsics).float()
  ixt = None if intrinsics is None else torch.from_numpy(intrinsics).float()
  m.vit.select_reference_view = recording
  try:
    with torch.no_grad():
      out = model.model(x, ext, ixt, [], False, False, ref_view_strategy)
  finally:
    m.vit.select_reference_view = original
  res = {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}
  res["ref_view"] = chosen[0] if chosen else np.full((images.shape[0],), -1)
  return res


def inference(model, frames, **kwargs):
  """``DepthAnything3.inference`` on a list of uint8 RGB frames (float32, see module doc)."""
  return model.inference(list(frames), **kwargs)


def relative_error(got, want) -> float:
  """max |got - want| / max |want|."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def backbone_and_head(net, images, *, ref_view_strategy="saddle_balanced"):
  """One DepthAnything3Net's backbone features / camera tokens and raw head outputs (rays
  included, which the full forward drops): numpy dict."""
  torch = da3().torch
  x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, 2))).float()
  with torch.no_grad():
    feats, _ = net.backbone(x, cam_token=None, export_feat_layers=[],
                            ref_view_strategy=ref_view_strategy)
    head = net.head(feats, x.shape[-2], x.shape[-1], patch_start_idx=0)
  out = {f"feature{i}": f[0].numpy() for i, f in enumerate(feats)}
  out.update({f"camera_token{i}": f[1].numpy() for i, f in enumerate(feats)})
  out.update({k: v.numpy() for k, v in head.items()})
  return out


def release_shapes(name: str):
  """(state-dict shapes, number of distinct parameters) of the package's preset ``name``, built
  without initialising its weights (the layers' ``reset_parameters`` skipped: the storage stays
  untouched, so even the 1.6B nested model costs no memory)."""
  m = da3()
  nn = m.torch.nn
  patched = [nn.Linear, nn.modules.conv._ConvNd, nn.LayerNorm]  # pylint: disable=protected-access
  saved = [c.reset_parameters for c in patched]
  for c in patched:
    c.reset_parameters = lambda self: None
  try:
    release = m.api.DepthAnything3(model_name=name)
  finally:
    for c, f in zip(patched, saved):
      c.reset_parameters = f
  shapes = {k: tuple(v.shape) for k, v in release.state_dict().items()}
  return shapes, sum(p.numel() for p in release.parameters())
