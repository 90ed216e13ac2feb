"""`cupid reconstruct PHOTO -o OUT`: one photo -> a result bundle, with a progress bar per stage."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import config
from ..errors import CliError

NAME = "reconstruct"
HELP = "reconstruct the object(s) in a photo and the camera that took it into a result bundle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("photo", help="the photo: an RGBA cut-out of the object, or any photo with --mask")
    p.add_argument("-o", "--output", required=True, help="directory for scene.json, GLB, PLY and overlay.png")
    p.add_argument("--mask", help="mask image of the object (scene mode: a label image, one label per object)")
    p.add_argument("--mode", choices=("object", "scene"), default="object", help="one object, or every object")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result)")
    p.add_argument("--steps", type=int, default=0, help="sampler steps per stage (0: the model's default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--model", default=config.CUPID_MODEL_ID, help="Hugging Face id or local model directory")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..pipeline import CupidPipeline
    from ..run import reconstruct_bundle

    if not Path(args.photo).is_file():
        raise CliError(f"photo not found: {args.photo}")
    if args.mask and not Path(args.mask).is_file():
        raise CliError(f"mask not found: {args.mask}")
    bars: dict[str, tqdm] = {}
    state = {"stage": None}

    def progress(stage: str, fraction: float) -> None:
        if stage != state["stage"]:
            if state["stage"] in bars:
                bars[state["stage"]].close()
            state["stage"] = stage
            bars[stage] = tqdm(total=1000, desc=f"{stage:>9}", unit="‰", leave=True, bar_format="{desc} {bar} {percentage:3.0f}% of job")
        bar = bars[stage]
        bar.n = int(fraction * 1000)
        bar.refresh()

    print(f"loading model {args.model} ...")
    pipe = CupidPipeline.from_pretrained(args.model, device=args.device)
    try:
        out = reconstruct_bundle(pipe, args.photo, args.output, mask=args.mask, mode=args.mode, seed=args.seed,
                                 steps=args.steps or None, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    print(f"wrote {Path(out) / 'scene.json'}")
    return 0
