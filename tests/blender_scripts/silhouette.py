"""Cycles settings for silhouette renders that compare pixel for pixel with the backend's rasteriser:
no bounces, no denoising, a near-zero pixel filter (each pixel samples its centre), transparent film
(alpha = coverage). Used by the pytest process and by the Blender driver scripts alike."""
from __future__ import annotations

from typing import Any


def setup_silhouette_render(scene: Any, filepath: str, samples: int = 8) -> None:
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.max_bounces = 0
    scene.cycles.filter_width = 0.01
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.filepath = str(filepath)
