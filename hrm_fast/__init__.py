"""hrm-fast: fast, self-checking training of the Hierarchical Reasoning Model on ARC-AGI."""

__version__ = "0.1.0"
