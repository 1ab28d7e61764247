"""Flax NNX models: the Wan2.1 DiT, PostCam on it, Wan-VAE and umT5."""

from flax import nnx

# Parameters carry *logical* axis names; they are placed on a mesh explicitly (sharded init under
# jit, or Orbax restore by abstract target), so creation must not require a mesh context.
nnx.use_eager_sharding(False)
