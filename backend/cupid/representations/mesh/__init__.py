"""FlexiCubes meshes from the SLat mesh decoder: `flexicubes_mesh(coords, feats, res, use_color)`."""
from .flexicubes import feature_channels, flexicubes_mesh, split_features
from .result import MeshExtractResult

__all__ = ["MeshExtractResult", "flexicubes_mesh", "feature_channels", "split_features"]
