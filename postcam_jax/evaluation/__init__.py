"""Measuring generated videos as the paper does: camera accuracy (``camera``, ``poses``),
fidelity (``fidelity``), per-video rows and tables (``report``, ``tables``), pictures
(``pictures``), held-out pairs sampled by a model (``heldout``), sampler outputs (``folder``);
``python -m postcam_jax.evaluate`` (``cli``)."""
