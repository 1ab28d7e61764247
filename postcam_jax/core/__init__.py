"""Foundations with no project imports: strict dataclass configs and atomic outputs."""
