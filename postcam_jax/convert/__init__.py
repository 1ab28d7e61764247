"""Checkpoint conversion between the PyTorch layouts and postcam-jax's Orbax checkpoints.

``common`` holds the shared machinery (tensor sources, the table-driven mapping with one error for
all problems, atomic output); one module per model family holds its key table.
"""
