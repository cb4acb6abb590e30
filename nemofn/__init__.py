"""nemofn: a functional rewrite of NeMo's core in PyTorch."""

__version__ = "0.1.0"
