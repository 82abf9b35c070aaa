"""edgecnn: from a trained efficient CNN to a small, fast, measured edge artifact."""

__version__ = "0.1.0"
