"""postcam-jax: PostCam (camera-controlled novel-view video generation on Wan2.1) in JAX/Flax NNX."""

__version__ = "0.1.0"
