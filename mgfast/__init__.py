"""mgfast: a fast, upstream-compatible Savant Media Gateway."""

__version__ = "0.1.0"
