"""CUPID inference backend: photo -> pose-grounded 3D objects (a pure-PyTorch TRELLIS/CUPID port)."""

__version__ = "0.1.0"  # the one version string: pyproject reads it, the extension zip is stamped with it
