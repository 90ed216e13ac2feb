"""CupidPipeline: loads a model directory once, then turns photos into `Reconstruction`s.

A model is a directory (or Hugging Face repo) with `pipeline.json`; every network in it loads
strictly through `cupid.models.load_model`, so the tiny test model of `cupid make-tiny-model` and
the official release run the same code. The pipeline owns both modes (one object; every object of a
scene placed by a point map) and returns results in memory: writing them is `cupid.export`'s job.
Progress is reported as (stage, fraction of the whole job); cancellation is checked at every stage
boundary and between sampler steps.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import config
from ..background import BackgroundRemover
from ..errors import CheckpointError, CupidError, InputError
from ..geometry import CameraPose, uncrop_uv, validate_camera, voxel_centers
from ..hub import cached_file, hub_file
from ..models import load_model
from ..models.dinov2 import ImageConditioner, load_dinov2
from ..models.dtype import resolve_dtype
from ..preprocess import Processed, load_photo, preprocess
from ..progress import CancelCheck, Progress, ProgressCallback
from ..reconstruction import Pairs, Preview, ReconstructedObject, Reconstruction
from ..sampler import FlowSampler, draw_noise, noise_stream
from ..scene.masks import ObjectMasks
from ..sparse import SparseTensor
from .scene import SCENE_OBJECTS_SPAN, Prompts, object_alphas, object_masks, place_objects, point_map
from .stage1 import PNP_METHODS, StructureResult, decode_structure, pose_from_structure, voxel_uvs
from .world import UNITS_METERS, UNITS_RELATIVE, real_size_scale, stand_result, upright_scene


_log = logging.getLogger(__name__)


def resolve_device(device: str | None) -> torch.device:
    """'auto' -> cuda, else mps, else cpu; anything else as torch names it."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown device {device!r}: use auto, cpu, cuda or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but PyTorch sees no CUDA GPU")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' was asked for but this PyTorch has no Apple MPS support")
    return dev


def _read_pipeline_json(model: str | os.PathLike) -> tuple[dict, str, bool]:
    """(args of pipeline.json, base for relative stems, whether it is local)."""
    path = Path(os.fspath(model)).expanduser()
    if path.is_dir():
        cfg = path / "pipeline.json"
        if not cfg.is_file():
            raise CheckpointError(f"{path} is not a CUPID model directory: it has no pipeline.json "
                                  f"(make one with 'cupid download' or 'cupid make-tiny-model')")
        return json.loads(cfg.read_text())["args"], str(path), True
    if path.exists() or str(model).count("/") != 1:
        raise CheckpointError(f"model {model!s} not found: give a model directory or a Hugging Face id "
                              f"such as {config.CUPID_MODEL_ID}")
    cfg = hub_file(str(model), "pipeline.json", what=f"the model description {model}/pipeline.json")
    return json.loads(Path(cfg).read_text())["args"], str(model), False


@dataclass
class StageOne:
    """What stage 1 leaves for stage 2 (kept by the service so that a refine skips stage 1)."""

    processed: Processed
    cond: torch.Tensor
    visual: torch.Tensor
    structure: StructureResult
    camera: CameraPose     # photo pixels: solved from the UV cube, or given
    seed: int
    noise_state: torch.Tensor   # the run's noise stream right after stage 1's draw (stage 2 draws next)
    real_scale: float | None = None   # meters per object unit once *Real size* measured it (refines reuse it)

    def preview(self) -> Preview:
        return Preview(self.camera, np.argwhere(self.structure.occupancy), self.structure.res)


class CupidPipeline:
    """The loaded networks and samplers of one model."""

    def __init__(self, models: dict[str, torch.nn.Module], conditioner: ImageConditioner,
                 ss_sampler: FlowSampler, slat_sampler: FlowSampler, slat_normalization: dict[str, list[float]],
                 device: torch.device, source: str = "", settings: dict[str, Any] | None = None,
                 dtype: torch.dtype = torch.float32):
        self.models = models
        self.conditioner = conditioner
        self.ss_sampler = ss_sampler
        self.slat_sampler = slat_sampler
        self.slat_mean = torch.tensor(slat_normalization["mean"], dtype=torch.float32, device=device)
        self.slat_std = torch.tensor(slat_normalization["std"], dtype=torch.float32, device=device)
        self.device = device
        self.dtype = dtype    # the networks' torso dtype (norms, embedders and outputs stay float32)
        self.source = source
        self.settings = dict(settings or {})  # the rest of pipeline.json (point-map model, export defaults)
        self._point_map_model: Any = None
        self._segmentation_model: Any = None
        self.pnp = check_pnp(self.settings.get("pnp", "robust"), f"{source or 'the model'}: pipeline.json's \"pnp\"",
                             CheckpointError)
        self.models["slat_flow_model"].attach_slat_encoder(self.models["slat_encoder"])

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = config.CUPID_MODEL_ID, device: str | None = "auto",
                        dtype: str | torch.dtype | None = "auto",
                        point_map_model: str | os.PathLike | None = None) -> "CupidPipeline":
        """Load every network of `model` on `device` in `dtype` (a name of DTYPE_CHOICES or a torch
        dtype; 'auto'/None: `resolve_dtype`'s choice for the device). `point_map_model` (a MoGe
        model.pt, a folder with one, or a Hub id) replaces the point-map model `point_map_source` picks."""
        dev = resolve_device(device)
        dtype = resolve_dtype(dtype, dev)
        args, base, local = _read_pipeline_json(model)
        missing = [r for r in config.RELEASE_MODELS if r not in args.get("models", {})]
        if missing:
            raise CheckpointError(f"{model}: pipeline.json lists no checkpoint for {', '.join(missing)}")
        models = {}
        for role in config.RELEASE_MODELS:
            stem = args["models"][role]
            local_stem = Path(base) / stem
            role_dtype = network_dtype(role, dtype)
            if local and Path(f"{local_stem}.json").is_file():
                models[role] = load_model(local_stem, device=dev, dtype=role_dtype)
            elif local or stem.count("/") >= 3:
                models[role] = load_model(stem if stem.count("/") >= 3 else local_stem, device=dev, dtype=role_dtype)
            else:
                models[role] = load_model(f"{base}/{stem}", device=dev, dtype=role_dtype)
        cond_name = args.get("image_cond_model", config.DINOV2_ID)
        cond_path = Path(base) / cond_name if local else None
        dino = load_dinov2(cond_path if cond_path is not None and cond_path.exists() else cond_name,
                           device=dev, dtype=network_dtype("image_cond_model", dtype))
        conditioner = ImageConditioner(dino).to(dev)
        ss = FlowSampler.from_config({**config.SPARSE_STRUCTURE_SAMPLER,
                                      **_flat(args.get("sparse_structure_sampler", {}))})
        slat = FlowSampler.from_config({**config.SLAT_SAMPLER, **_flat(args.get("slat_sampler", {}))})
        norm = args.get("slat_normalization")
        if not norm:
            raise CheckpointError(f"{model}: pipeline.json has no slat_normalization")
        settings = {k: v for k, v in args.items() if k not in ("models", "sparse_structure_sampler", "slat_sampler",
                                                               "slat_normalization", "image_cond_model")}
        if point_map_model:
            settings["moge_model"] = os.fspath(point_map_model)
        return cls(models, conditioner, ss, slat, norm, dev, source=str(base), settings=settings, dtype=dtype)

    @property
    def export_settings(self) -> dict[str, Any]:
        """The model's export defaults (pipeline.json "export"), for `cupid.export.ExportOptions`."""
        return dict(self.settings.get("export", {}))

    @property
    def point_map_source(self) -> str | Path:
        """The point-map model to load: the one named (`from_pretrained(point_map_model=...)`, else
        pipeline.json "moge_model", a file of the model directory or a Hub id), else MoGe-2 (metric) when
        `cupid download` put it in the cache, else MoGe v1 (the release's, affine)."""
        name = self.settings.get("moge_model")
        if name:
            local = Path(self.source) / name
            return local if local.exists() else name
        if cached_file(config.MOGE2_ID, config.MOGE_FILE) is not None:
            return config.MOGE2_ID
        return config.MOGE_ID

    @property
    def point_map_model(self) -> Any:
        """Scene mode's (and *Real size*'s) point-map model, `point_map_source`, loaded on first use."""
        if self._point_map_model is None:
            from ..models.moge import load_moge

            self._point_map_model = load_moge(self.point_map_source, device=self.device)
        return self._point_map_model

    def metric_point_map_present(self) -> bool:
        """Whether a metric point-map model is here without downloading anything: the one of
        `point_map_source`, when it is a local file or already cached, and has a scale head. What
        *Real size* defaults to."""
        if self._point_map_model is None:
            source = self.point_map_source
            path = Path(os.fspath(source)).expanduser()
            if not path.exists():
                if str(source).count("/") != 1 or cached_file(str(source), config.MOGE_FILE) is None:
                    return False
        return bool(getattr(self.point_map_model, "metric", False))

    @property
    def segmentation_model(self) -> Any:
        """The SAM that makes scene masks: pipeline.json "sam_model" (a file of the model directory or a
        Hub path), else $CUPID_SAM_CHECKPOINT or the default of `cupid download`; loaded on first use."""
        if self._segmentation_model is None:
            from ..models.sam import load_sam

            name = self.settings.get("sam_model")
            local = Path(self.source) / name if name else None
            self._segmentation_model = load_sam(local if local is not None and local.exists() else name,
                                                device=self.device)
        return self._segmentation_model

    @property
    def remover(self) -> BackgroundRemover:
        """Object mode's background remover for photos with neither a mask nor alpha: pipeline.json's
        "background_model", else the official u2net; its network loads only when a photo needs it."""
        return BackgroundRemover.for_model(self.source, self.settings.get("background_model"))

    def object_mask(self, image: Any, mask: Any = None) -> np.ndarray:
        """float [H, W]: the object object mode would reconstruct: the mask, else the photo's alpha, else
        what the remover cuts out. Shown to the artist before a reconstruction runs."""
        return preprocess(image, mask, remover=self.remover).alpha

    def segment(self, image: Any, prompts: Prompts | None = None) -> ObjectMasks:
        """The objects of a photo as masks: one per prompt (points, then boxes, in photo pixels), or the
        automatic ones. What scene mode would reconstruct, shown before it runs."""
        photo = load_photo(image)[..., :3]
        masks = object_masks(photo, None, prompts, lambda: self.segmentation_model)
        if len(masks) == 0:
            raise InputError("no object found in the photo: pick the objects with points or boxes")
        return masks

    # ------------------------------------------------------------------ stages
    def condition(self, processed: Processed) -> tuple[torch.Tensor, torch.Tensor]:
        """DINOv2 tokens of the 518² crop, and the 256² RGB×alpha crop for the conv head."""
        cond = self.conditioner.encode(processed.cond_image[None].to(self.device))
        return cond, processed.visual_image[None].to(self.device)

    def sample_structure(self, cond: torch.Tensor, noise: torch.Generator | int, steps: int | None,
                         job: Progress) -> StructureResult:
        """Stage 1; `noise` is the run's stream (see `noise_stream`), or a seed for a fresh one."""
        flow = self.models["sparse_structure_flow_model"]
        ss_dec = self.models["sparse_structure_decoder"]
        uv_dec = self.models["sparse_structure_uv_decoder"]
        sampler = _with_steps(self.ss_sampler, steps)
        res = flow.resolution
        x = draw_noise((1, flow.in_channels, res, res, res), _stream(noise), self.device)
        z = sampler.sample(flow, x, cond, torch.zeros_like(cond),
                           progress=lambda f: job.report("structure", f), should_cancel=job.should_cancel)
        c = ss_dec.latent_channels
        ss_logits = ss_dec(z[:, :c])
        uv_logits = uv_dec(z[:, c:c + uv_dec.latent_channels])
        return decode_structure(ss_logits[0, 0], uv_logits[0])

    def sample_latent(self, structure: StructureResult, pose_in_crop: CameraPose, cond: torch.Tensor,
                      visual: torch.Tensor, noise: torch.Generator | int, steps: int | None,
                      job: Progress) -> SparseTensor:
        """Stage 2; draws its noise from the run's stream right after stage 1's, as the release does."""
        flow = self.models["slat_flow_model"]
        idx = np.argwhere(structure.occupancy)
        coords = torch.zeros((len(idx), 4), dtype=torch.int32)
        coords[:, 1:] = torch.from_numpy(idx.astype(np.int32))
        coords = coords.to(self.device)
        uvs = SparseTensor(torch.from_numpy(voxel_uvs(idx, structure.res, pose_in_crop)).float().to(self.device),
                           coords)
        x = SparseTensor(draw_noise((len(idx), flow.out_channels), _stream(noise), self.device), coords)
        cond_d = {"dino_cond": cond, "visual_cond": visual}
        neg_d = {"dino_cond": torch.zeros_like(cond), "visual_cond": torch.zeros_like(visual)}
        if hasattr(flow, "voxel_condition"):  # per-voxel features: once per run, not once per step
            cond_d["voxel_cond"] = flow.voxel_condition(uvs, cond_d)
            neg_d["voxel_cond"] = flow.voxel_condition(uvs, neg_d)
        sampler = _with_steps(self.slat_sampler, steps)
        slat = sampler.sample(flow, x, cond_d, neg_d, uvs=uvs,
                              progress=lambda f: job.report("latent", f), should_cancel=job.should_cancel)
        return slat.replace(slat.feats.float() * self.slat_std + self.slat_mean)

    def decode(self, slat: SparseTensor, check: Callable[[], None] | None = None) -> tuple[Any, Any]:
        """The mesh and the Gaussians of a structured latent; `check` (a cancel check) runs between
        the mesh decoder's network and its surface extraction, and before the Gaussians' decoder."""
        check = check or (lambda: None)
        decoder = self.models["slat_decoder_mesh"]
        if hasattr(decoder, "forward_raw"):
            raw = decoder.forward_raw(slat)
            check()
            mesh = decoder.to_representation(raw)[0]
        else:
            mesh = decoder(slat)[0]
        check()
        gaussians = self.models["slat_decoder_gs"](slat)[0]
        if not mesh.success:
            raise CupidError("the mesh decoder found no surface in this object (try another seed)",
                             code="empty_mesh")
        return mesh, gaussians

    # ------------------------------------------------------------------ one object
    @torch.no_grad()
    def stage_one(self, processed: Processed, *, seed: int = 0, steps: int | None = None,
                  progress: Progress | None = None, camera: CameraPose | None = None,
                  pnp: str | None = None) -> StageOne:
        """Condition and sample the structure; solve the camera from its UV cube (`pnp`: "robust" or
        "dlt", None for the model's pipeline.json "pnp"), or take `camera` (photo pixels) as given.
        One noise stream seeded once with `seed` feeds stage 1, then stage 2 (the release's order); what
        this returns is all stage 2 needs, the stream's state included, so a refine can start there."""
        job = progress or Progress()
        method = self.pnp if pnp is None else check_pnp(pnp, "pnp")
        stream = noise_stream(seed)
        job.report("condition", 0.0)
        cond, visual = self.condition(processed)
        structure = self.sample_structure(cond, stream, steps, job)
        job.report("pose", 0.0)
        crop = processed.crop
        if camera is None:
            camera, _ = pose_from_structure(structure, crop.offset, crop.size, processed.size, seed=seed,
                                            method=method)
        else:
            camera = self.check_camera(camera, structure, processed)
        return StageOne(processed, cond, visual, structure, camera, seed, stream.get_state())

    def check_camera(self, camera: CameraPose, structure: StructureResult, processed: Processed) -> CameraPose:
        """A given camera, refused (InputError) when it is malformed, for another photo size, or sees
        none of the object's voxels."""
        validate_camera(camera)
        if camera.image_size != processed.size:
            raise InputError(f"the camera is for a {camera.width}x{camera.height} image but the photo is "
                             f"{processed.size[0]}x{processed.size[1]}")
        centres = voxel_centers(np.argwhere(structure.occupancy), structure.res)
        uv = camera.project(centres)
        seen = np.isfinite(uv).all(1) & (uv >= 0).all(1) & (uv <= 1).all(1)
        if not seen.any():
            raise InputError("the camera sees none of the object's voxels: it must look at the object "
                             "(in front of it, inside the photo)")
        return camera

    @torch.no_grad()
    def stage_two(self, first: StageOne, *, camera: CameraPose | None = None, steps: int | None = None,
                  progress: Progress | None = None, name: str = "object_0") -> ReconstructedObject:
        """Stage 2 and decoding with stage 1's camera (or `camera`, photo pixels): the object's mesh and
        Gaussians (object frame), that camera, its 3D-2D pairs (voxel centres, uv in the photo), its mask."""
        job = progress or Progress()
        processed, structure, crop = first.processed, first.structure, first.processed.crop
        camera = first.camera if camera is None else self.check_camera(camera, structure, processed)
        stream = noise_stream(first.seed)
        stream.set_state(first.noise_state)   # stage 2's noise follows stage 1's, however often this runs
        slat = self.sample_latent(structure, camera.in_crop(crop.offset, crop.size), first.cond, first.visual,
                                  stream, steps, job)
        job.report("decode", 0.0)
        mesh, gaussians = self.decode(slat, check=job.check)
        job.check()
        attrs = mesh.vertex_attrs
        colors = attrs[:, :3].float().cpu().numpy() if attrs is not None else None
        uv_photo = uncrop_uv(structure.uv, 1.0, crop.offset, (crop.size, crop.size), processed.size)
        pairs = Pairs(voxel_centers(structure.uv_indices, structure.res), uv_photo, structure.res)
        return ReconstructedObject(name=name, vertices=mesh.vertices.float().cpu().numpy(),
                                   faces=mesh.faces.cpu().numpy(), vertex_colors=colors, gaussians=gaussians,
                                   camera=camera, pairs=pairs, mask=processed.alpha)

    def reconstruct_object(self, processed: Processed, *, seed: int = 0, steps: int | None = None,
                           progress: Progress | None = None, name: str = "object_0",
                           camera: CameraPose | None = None, on_stage_one: Callable[[StageOne], None] | None = None,
                           pnp: str | None = None) -> ReconstructedObject:
        """Stages 1 and 2 for one object (see `stage_one`, `stage_two`); `on_stage_one` sees stage 1's
        result (its `preview()`) before stage 2 starts."""
        job = progress or Progress()
        first = self.stage_one(processed, seed=seed, steps=steps, progress=job, camera=camera, pnp=pnp)
        if on_stage_one is not None:
            on_stage_one(first)
        return self.stage_two(first, steps=steps, progress=job, name=name)

    # ------------------------------------------------------------------ the two modes
    def reconstruct(self, image: Any, *, mask: Any = None, mode: str = "object", seed: int = 0,
                    steps: int | None = None, progress: ProgressCallback | Progress | None = None,
                    should_cancel: CancelCheck | None = None, camera: CameraPose | None = None,
                    on_stage_one: Callable[[StageOne], None] | None = None,
                    prompts: Prompts | None = None, pnp: str | None = None,
                    real_size: bool | None = None) -> Reconstruction:
        """Photo (+ mask) -> Reconstruction (write it with `cupid.export.write_bundle`).

        Every result is upright (+Z up, the ground at z = 0). Scene mode: the point-map camera's world
        levelled by `cupid.scene.upright.upright_world`, in meters when the point-map model is metric.
        Object mode: the object on z = 0 centred on the origin, the camera moved with it; `real_size`
        measures it in meters with the point map of the photo (None: when a metric point-map model is
        present, `metric_point_map_present`). `camera`, `on_stage_one`'s preview and a refine's camera
        are in the object's own frame.

        Object mode: one object, seen by the camera solved from its own structure, or by `camera`
        (photo pixels) when given; `on_stage_one` is called with stage 1's result (camera + voxels)
        before stage 2. Scene mode: one object per mask (a label image, mask files, or automatic
        masks), each reconstructed from its own occlusion-aware crop and placed in the point-map
        model's camera; without a mask, `prompts` (points, boxes in photo pixels) pick the objects,
        and without either the segmentation model finds them. `progress` is a (stage, fraction of the
        job) callback, or a `Progress` whose `remainder()` then drives the export. `pnp` picks the
        camera solver, "robust" or "dlt" (None: the model's pipeline.json "pnp")."""
        if mode not in ("object", "scene"):
            raise InputError(f"mode must be 'object' or 'scene', got {mode!r}")
        if pnp is not None:
            check_pnp(pnp, "pnp")
        if steps is not None and not (0 <= int(steps) <= 500):
            raise InputError(f"steps must be between 1 and 500 (0 = the model's default), got {steps}")
        if camera is not None and mode != "object":
            raise InputError("a given camera is for object mode (a scene's camera comes from its point map)")
        job = progress if isinstance(progress, Progress) else Progress(progress, should_cancel)
        job.check()
        if prompts is not None and mode != "scene":
            raise InputError("object picks (points, boxes) are for scene mode")
        if real_size is not None and mode != "object":
            raise InputError("Real size is for object mode (a scene is in meters whenever its point map is)")
        if mode == "scene":
            return self._reconstruct_scene(image, mask, prompts, seed=seed, steps=steps, job=job, pnp=pnp)
        if real_size and not self.metric_point_map_present():
            raise InputError(f"Real size needs a metric point-map model (MoGe-2: run 'cupid download'); "
                             f"{self.point_map_source} is not one or is not downloaded")
        processed = preprocess(image, mask, remover=self.remover, check=job.check)
        first = self.stage_one(processed, seed=seed, steps=steps, progress=job, camera=camera, pnp=pnp)
        if on_stage_one is not None:
            on_stage_one(first)
        obj = self.stage_two(first, steps=steps, progress=job)
        asked = real_size
        if real_size is None:
            real_size = self.metric_point_map_present()
        if real_size:
            job.report("export", 0.0)
            try:
                first.real_scale = real_size_scale(self.point_map_model, processed.photo, obj, processed.alpha,
                                                   seed=seed)
            except CupidError as exc:
                if asked:
                    raise
                _log.warning("%s; the result keeps relative units", exc.message)
        return self._object_result(first, obj, job)

    def _object_result(self, first: StageOne, obj: ReconstructedObject, job: Progress) -> Reconstruction:
        """Object mode's result: the object standing upright on z = 0, at stage 1's real scale if any."""
        job.report("export", 0.0)
        camera = stand_result(obj, obj.camera, first.real_scale)
        units = UNITS_METERS if first.real_scale is not None else UNITS_RELATIVE
        return Reconstruction(photo=first.processed.photo, camera=camera, objects=[obj], mode="object",
                              seed=first.seed, units=units,
                              up={"source": "objects", "ground_height": 0.0, "lowest_point": 0.0,
                                  "objects_agreeing": 1})

    def refine(self, first: StageOne, camera: CameraPose, *, steps: int | None = None,
               progress: ProgressCallback | Progress | None = None,
               should_cancel: CancelCheck | None = None) -> Reconstruction:
        """Stage 2, decoding and nothing else, from a kept stage 1 and a camera the artist moved (in the
        object's own frame); upright and at stage 1's real scale like the result it refines."""
        job = progress if isinstance(progress, Progress) else Progress(progress, should_cancel)
        job.report("latent", 0.0)
        obj = self.stage_two(first, camera=camera, steps=steps, progress=job)
        return self._object_result(first, obj, job)

    @torch.no_grad()
    def _reconstruct_scene(self, image: Any, mask: Any, prompts: Prompts | None, *, seed: int,
                           steps: int | None, job: Progress, pnp: str | None = None) -> Reconstruction:
        photo = load_photo(image)[..., :3]
        alphas = object_alphas(photo, mask, prompts, lambda: self.segmentation_model)
        objects = []
        for k, alpha in enumerate(alphas):
            processed = preprocess(photo, mask=(alpha.full() * 255).astype(np.uint8))
            obj = self.reconstruct_object(processed, seed=seed + 7919 * k, steps=steps,
                                          progress=job.part(k, len(alphas), SCENE_OBJECTS_SPAN), name=f"object_{k}",
                                          pnp=pnp)
            obj.mask = alpha   # the visible part of the object (a crop): what its fit score checks
            objects.append(obj)
        job.mark("pointmap", SCENE_OBJECTS_SPAN + 0.01)
        model = self.point_map_model
        points, valid, K_scene = point_map(model, photo, [o.camera for o in objects])
        place_objects(objects, alphas, points, valid, seed=seed)
        job.mark("export", 0.95)
        H, W = photo.shape[:2]
        camera, world = upright_scene(objects, CameraPose(K_scene, np.eye(3), np.zeros(3), W, H), points, valid,
                                      alphas, seed=seed)
        units = UNITS_METERS if getattr(model, "metric", False) else UNITS_RELATIVE
        return Reconstruction(photo=photo, camera=camera, objects=objects, mode="scene", seed=seed, units=units,
                              up=world.describe())


FLOW_ROLES = ("sparse_structure_flow_model", "slat_flow_model")


def network_dtype(role: str, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype one network of the pipeline loads in (None: its checkpoint's default for the device).

    The two flows run 2 x 25 times per job, so they take the run's dtype. The others (DINOv2, the
    decoders, the SLat encoder) run once: their outputs are the conditioning, the occupancy, the UV cube
    the camera is solved from, and the surface, and bfloat16's 8 bits would show in the camera (about 1
    degree on the tiny model), so they keep their default: float32 on a CPU (computed from the stored
    float16 weights, so no extra memory), float16 on CUDA where the release trains and runs them so.
    float32 asked for means float32 everywhere."""
    return dtype if role in FLOW_ROLES or dtype == torch.float32 else None


def check_pnp(method: Any, what: str, error: type[CupidError] = InputError) -> str:
    """The camera solver's name, or `error` naming where the bad value came from."""
    if not isinstance(method, str) or method not in PNP_METHODS:
        raise error(f"{what} must be one of {', '.join(PNP_METHODS)}, got {method!r}")
    return method


def _stream(noise: torch.Generator | int) -> torch.Generator:
    return noise if isinstance(noise, torch.Generator) else noise_stream(int(noise))


def _flat(entry: dict) -> dict:
    if "args" in entry or "params" in entry:
        return {**entry.get("args", {}), **entry.get("params", {})}
    return dict(entry)


def _with_steps(sampler: FlowSampler, steps: int | None) -> FlowSampler:
    if not steps:
        return sampler
    return dataclasses.replace(sampler, steps=int(steps))
