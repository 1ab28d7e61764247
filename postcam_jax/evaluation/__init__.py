"""Measuring generated videos: fidelity to a reference video."""
