"""Sky handling and the metric scale alignment of DA3's mono/metric and nested models, with
masks instead of boolean indexing (jit- and sharding-friendly).

Facts: depth-anything-3 0.1.1 ``model/da3.py`` (``_process_mono_sky_estimation``,
``NestedDepthAnything3Net``) and ``utils/alignment.py``. The release estimates its quantiles on a
random subsample (``torch.randint``/``randperm``, 100,000 values) whenever more values are
available; here they are exact quantiles over all values (the same result below 100,000 values;
deterministic above).
"""

import jax.numpy as jnp

SKY_THRESHOLD = 0.3
METRIC_FOCAL = 300.0
SKY_DEPTH_LIMIT = 200.0


def masked_quantile(values, mask, q: float):
  """torch.quantile(values[mask], q) (linear interpolation, float32 rank and lerp as torch)."""
  v = jnp.where(mask, values, jnp.inf).reshape(-1).astype(jnp.float32)
  ordered = jnp.sort(v)
  n = jnp.sum(mask).astype(jnp.int32)
  rank = jnp.float32(q) * (n - 1).astype(jnp.float32)
  below = jnp.floor(rank).astype(jnp.int32)
  above = jnp.ceil(rank).astype(jnp.int32)
  lo = ordered[jnp.clip(below, 0, v.size - 1)]
  hi = ordered[jnp.clip(above, 0, v.size - 1)]
  w = rank - below.astype(jnp.float32)
  return jnp.where(w < 0.5, lo + w * (hi - lo), hi - (hi - lo) * (1 - w))


def fill_sky(depth, sky, valid):
  """The mono/metric models' sky step: if more than 10 pixels are sky and more than 10 are not,
  sky pixels get the 0.99 quantile of the non-sky depth. ``valid`` masks padded views."""
  non_sky = jnp.logical_and(sky < SKY_THRESHOLD, valid)
  sky_px = jnp.logical_and(jnp.logical_not(non_sky), valid)
  apply = jnp.logical_and(jnp.sum(non_sky) > 10, jnp.sum(sky_px) > 10)
  top = masked_quantile(depth, non_sky, 0.99)
  return jnp.where(jnp.logical_and(apply, sky_px), top, depth)


def align_to_metric(out: dict, metric: dict, valid):
  """The nested model's scaling of the any-view output ``out`` to the metric branch ``metric``.

  metric depth x (fx + fy) / 2 / 300 (the any-view focal length); s = least squares of the
  metric on the any-view depth over non-sky pixels with confidence >= its non-sky median; depth
  and translations x s; sky pixels -> min(0.99 quantile of non-sky depth, 200) with confidence 1.
  Returns the new dict with ``scale_factor`` [] and ``non_sky_count`` [] (the release asserts
  more than 10 non-sky pixels).
  """
  k = out["intrinsics"]
  focal = (k[..., 0, 0] + k[..., 1, 1]) / 2
  metric_depth = metric["depth"] * (focal[..., None, None] / METRIC_FOCAL)
  non_sky = jnp.logical_and(metric["sky"] < SKY_THRESHOLD, valid)
  conf, depth = out["depth_conf"], out["depth"]
  median = masked_quantile(conf, non_sky, 0.5)
  use = non_sky & (conf >= median) & (metric_depth > 1e-2) & (depth > 1e-3)
  num = jnp.sum(jnp.where(use, metric_depth * depth, 0.0))
  den = jnp.maximum(jnp.sum(jnp.where(use, depth * depth, 0.0)), 1e-12)
  scale = num / den
  depth = depth * scale
  ext = out["extrinsics"]
  ext = jnp.concatenate([ext[..., :3], ext[..., 3:] * scale], axis=-1)
  top = jnp.minimum(masked_quantile(depth, non_sky, 0.99), SKY_DEPTH_LIMIT)
  sky = jnp.logical_not(non_sky)
  return {**out, "depth": jnp.where(sky, top, depth), "depth_conf": jnp.where(sky, 1.0, conf),
          "extrinsics": ext, "scale_factor": scale, "non_sky_count": jnp.sum(non_sky)}
