"""The CUPID pipeline: photo -> pose-grounded 3D objects and the camera, written as a result bundle."""
from .pipeline import FLOW_ROLES, CupidPipeline, StageOne, network_dtype, resolve_device
from .stage1 import StructureResult, decode_structure, pose_from_structure

__all__ = ["FLOW_ROLES", "network_dtype", "CupidPipeline", "StageOne", "resolve_device", "StructureResult", "decode_structure", "pose_from_structure"]
