"""reinf: a local coding assistant that learns from its user's own ratings."""

__version__ = "0.1.0"
