"""`cupid reconstruct PHOTO -o OUT`: one photo -> a result bundle, with a progress bar per stage."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CliError
from ..geometry.pnp import PNP_METHODS
from .staging import check_output, staging
from .device import (add_device_arguments, add_model_argument, add_point_map_argument, announce_device,
                     announce_model, point_map_option)

if TYPE_CHECKING:
    from ..geometry import CameraPose
    from ..reconstruction import Preview

NAME = "reconstruct"
HELP = "reconstruct the object(s) in a photo and the camera that took it into a result bundle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("photo", help="the photo: any photo (an opaque one is cut out automatically), an RGBA cut-out, "
                                 "or any photo with --mask")
    p.add_argument("-o", "--output", required=True,
                   help="directory for scene.json, GLB, PLY and overlay.png: a new or empty one (see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the bundle in a non-empty output directory (its files go, once the new one is done)")
    p.add_argument("--mask", help="mask image of the object (scene mode: a label image, one label per object)")
    p.add_argument("--mode", choices=("object", "scene"), default="object", help="one object, or every object")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result)")
    p.add_argument("--steps", type=int, default=0, help="sampler steps per stage (0: the model's default)")
    add_device_arguments(p)
    p.add_argument("--pnp", choices=PNP_METHODS, default=None,
                   help="camera solver: robust (RANSAC + refinement, the default) or dlt (the release's, "
                        "to reproduce its results seed for seed); default: the model's pipeline.json")
    add_model_argument(p)
    p.add_argument("--point", action="append", default=[], metavar="X,Y",
                   help="scene mode: pick an object by a click at pixel X,Y of the photo (repeat for more objects)")
    p.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                   help="scene mode: pick an object by a box around it, in the photo's pixels (repeatable)")
    p.add_argument("--photo-texture", action=argparse.BooleanOptionalAction, default=None,
                   help="project the photo's own pixels onto the surface its camera sees (default: on, or the "
                        "model's setting); --no-photo-texture keeps the generated texture alone")
    p.add_argument("--max-texture-size", type=int, default=None, metavar="TEXELS",
                   help="the largest texture the photo texture may choose, 16 to 16384 (default: 4096, or the "
                        "model's setting)")
    p.add_argument("--camera", metavar="CAMERA.json",
                   help="use this camera instead of solving one: JSON with K, R, t (OpenCV, in the photo's pixels), "
                        "e.g. a bundle's preview.json or scene.json (object mode)")
    p.add_argument("--real-size", action=argparse.BooleanOptionalAction, default=None,
                   help="object mode: measure the object in meters with a metric point map of the photo (MoGe-2); "
                        "default: on when MoGe-2 is downloaded. Scene mode is in meters whenever its point map is")
    add_point_map_argument(p)


def read_camera_json(path: str, photo: str) -> "CameraPose":
    """A camera from JSON (K, R, t; width/height optional, else the photo's), checked."""
    from ..geometry import CameraPose, validate_camera
    from ..preprocess import load_photo

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the camera {path}: {exc}") from None
    placement = None
    if isinstance(data, dict) and isinstance(data.get("camera"), dict):  # preview.json / scene.json
        objects = data.get("objects")
        if isinstance(objects, list) and len(objects) == 1 and isinstance(objects[0], dict):
            placement = objects[0].get("transform")   # scene.json: its world is upright, not the object's frame
        data = {**data["camera"], "width": data.get("width", data.get("image", {}).get("width")),
                "height": data.get("height", data.get("image", {}).get("height"))}
    if not isinstance(data, dict):
        raise CliError(f"the camera {path} must be a JSON object with K, R and t")
    if data.get("width") is None or data.get("height") is None:
        h, w = load_photo(photo).shape[:2]
        data = {**data, "width": w, "height": h}
    camera = validate_camera(CameraPose.from_dict(data))
    if placement is not None:
        from ..geometry import Similarity, check_rotation

        try:
            sim = Similarity(float(placement["scale"]), check_rotation(placement["R"], "the object's R"),
                             np.asarray(placement["t"], float).reshape(3))
        except (KeyError, TypeError, ValueError) as exc:
            raise CliError(f"the camera {path}: its object's transform is malformed ({exc})") from None
        camera = camera.in_object_frame(sim)
    return camera


def write_preview(out_dir: Path, preview: "Preview") -> None:
    """preview.json (stage 1's camera and voxels) into the bundle directory, as soon as stage 1 ends."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "preview.json").write_text(json.dumps(preview.to_dict()), encoding="utf-8")
    print(f"stage 1 done: camera and {len(preview.voxels)} voxels in {out_dir / 'preview.json'}", flush=True)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import InputError
    from ..export import ExportOptions
    from ..pipeline import CupidPipeline
    from ..run import reconstruct_bundle
    from ..scene.masks import parse_box, parse_point
    from ..server.inputs import decode_inputs
    from ..server.schemas import check_seed

    check_seed(args.seed, "--seed")
    if args.steps < 0:
        raise CliError("--steps must be 0 (the model's default) or more")
    if not Path(args.photo).is_file():
        raise CliError(f"photo not found: {args.photo}")
    out_dir = Path(args.output)
    check_output(out_dir, args.overwrite)
    if args.mask and not Path(args.mask).is_file():
        raise CliError(f"mask not found: {args.mask}")
    camera = read_camera_json(args.camera, args.photo) if args.camera else None
    if args.real_size is not None and args.mode != "object":
        raise CliError("--real-size/--no-real-size is for object mode (a scene is in meters whenever its point "
                       "map is)")
    export = {"photo_texture": args.photo_texture, "max_texture_size": args.max_texture_size}
    if args.max_texture_size is not None:   # refused now, not after the reconstruction
        try:
            ExportOptions(max_texture_size=args.max_texture_size).check()
        except InputError as exc:
            raise CliError(exc.message.replace("max_texture_size", "--max-texture-size")) from None
    prompts = None
    if args.point or args.box:
        if args.mode != "scene":
            raise CliError("--point and --box pick objects in scene mode: add --mode scene")
        if args.mask:
            raise CliError("give either --mask or --point/--box, not both")
        prompts = ([list(parse_point(p)) for p in args.point], [list(parse_box(b)) for b in args.box])
    bars: dict[str, tqdm] = {}
    state = {"stage": None, "tenth": -1}
    live = sys.stderr.isatty()  # a bar redrawn in place on a terminal; plain lines into a log file

    def progress(stage: str, fraction: float) -> None:
        if not live:
            tenth = int(fraction * 10)
            if stage != state["stage"] or tenth != state["tenth"]:
                state["stage"], state["tenth"] = stage, tenth
                print(f"{stage:>9} {tenth * 10:3d}% of job", file=sys.stderr, flush=True)
            return
        if stage != state["stage"]:
            if state["stage"] in bars:
                bars[state["stage"]].close()
            state["stage"] = stage
            bars[stage] = tqdm(total=1000, desc=f"{stage:>9}", unit="‰", leave=True, bar_format="{desc} {bar} {percentage:3.0f}% of job")
        bar = bars[stage]
        bar.n = int(fraction * 1000)
        bar.refresh()

    # a photo or mask that cannot be used is refused before the model loads (as the service does)
    inputs = decode_inputs(Path(args.photo), Path(args.mask) if args.mask else None, args.mode)
    if args.mode == "scene" and inputs.mask is not None:
        count = len(inputs.mask)
        print(f"scene mode: {count} object{'s' if count != 1 else ''} in the label image {Path(args.mask).name}")
    model = announce_model(args.model)
    print(f"loading model {model} ...")
    device, dtype = announce_device(args.device, args.dtype)
    pipe = CupidPipeline.from_pretrained(model, device=device, dtype=dtype, **point_map_option(args))
    with staging(out_dir) as work:
        try:
            reconstruct_bundle(pipe, args.photo, work, mask=args.mask, mode=args.mode, seed=args.seed,
                               steps=args.steps or None, progress=progress, pnp=args.pnp, camera=camera,
                               **({"real_size": args.real_size} if args.mode == "object" else {}),
                               prompts=prompts, on_stage_one=lambda first: write_preview(work, first.preview()),
                               export=export)
        finally:
            for bar in bars.values():
                bar.close()
    print(f"wrote {out_dir / 'scene.json'}")
    return 0
