"""CUPID inference backend: photo -> pose-grounded 3D objects (a pure-PyTorch TRELLIS/CUPID port)."""

__version__ = "0.1.0"
