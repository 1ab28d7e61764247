"""The one attention entry point of the models.

Every attention in the models calls :func:`attention` with [B, L, H, D] tensors and an
``implementation`` name; the dispatch below is the whole table (nothing registers itself):

- one-device kernels (``local``): ``auto`` (per platform), ``xla``, ``blocked`` (tiles with an
  online softmax and a recomputing backward: ``blocked.py``), ``cpu_flash`` (the same fused into
  one C++ kernel, an FFI call: ``cpu_flash.py``; ``auto`` runs one of the two on CPU),
  ``cudnn``, ``splash``, ``splash_interpret`` (the Pallas TPU kernel in interpret mode, for CPU
  tests);
- sequence-parallel schemes over the mesh's sequence axis (``sequence_parallel``): ``sequence``
  (pick per mesh and shapes), ``ulysses``, ``allgather_kv``, ``ring``.
"""

from postcam_jax.models.attention import blocked, local, sequence_parallel
from postcam_jax.models.attention.blocked import blocked_attention
from postcam_jax.models.attention.local import xla_attention

IMPLEMENTATIONS = local.KERNELS + ("sequence",) + tuple(sequence_parallel.SCHEMES)

__all__ = ["IMPLEMENTATIONS", "attention", "blocked", "blocked_attention", "xla_attention"]


def attention(q, k, v, *, bias=None, scale=None, implementation: str = "auto", precision=None):
  """softmax(scale q k^T + bias) v: [B, L, H, D] in and out.

  ``bias``: an additive float32 logits bias broadcastable to [B, H, Lq, Lk] (T5's relative
  positions and its padding mask, as a large negative value); ``scale``: 1/sqrt(D) by default.
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"attention takes [B, L, H, D] tensors, got {q.shape}, {k.shape}, {v.shape}")
  if implementation in local.KERNELS:
    return local.local_attention(q, k, v, kernel=implementation, bias=bias, scale=scale,
                                 precision=precision)
  if bias is not None or scale is not None:
    if implementation == "sequence":  # nothing to split for a biased (text) attention
      return local.local_attention(q, k, v, bias=bias, scale=scale, precision=precision)
    raise ValueError(f"the sequence-parallel '{implementation}' attention takes no bias or scale")
  if implementation == "sequence" or implementation in sequence_parallel.SCHEMES:
    return sequence_parallel.sequence_parallel_attention(q, k, v, scheme=implementation,
                                                         precision=precision)
  raise ValueError(f"unknown attention implementation {implementation!r}; known: "
                   f"{sorted(IMPLEMENTATIONS)}")
