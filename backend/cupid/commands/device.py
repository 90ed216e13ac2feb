"""--model, --device and --dtype, shared by the commands that load the model, and the lines saying what they chose."""
from __future__ import annotations

import argparse
import sys

DTYPE_HELP = ("precision of the networks: auto (float16 on CUDA as the release; on a CPU bfloat16 where it has "
              "bf16 instructions, else float32; float32 on Apple MPS), or float32, bfloat16, float16 as asked")


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    from ..models.dtype import DTYPE_CHOICES

    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="Hugging Face id or local model directory (default: the model this environment's set-up "
                        "installed, else the official hbb1/Cupid)")


def announce_model(asked: str | None) -> str:
    """The model to run: --model, else the set-up's (`cupid.setup_record`), else the official one; said
    on stderr with where it came from ('model /x/weights/tiny (set up in /x/.venv/cupid-setup.json; ...)')."""
    from ..setup_record import choose_model

    model, why = choose_model(asked)
    print(f"model {model} ({why})", file=sys.stderr, flush=True)
    return model


def add_point_map_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--point-map-model", default=None, metavar="MOGE",
                   help="point-map model of scene mode and Real size: a MoGe model.pt, a folder with one, or a "
                        "Hugging Face id such as Ruicheng/moge-vitl (MoGe v1, the release's, no units); default: "
                        "MoGe-2 (Ruicheng/moge-2-vitl, meters) when downloaded, else MoGe v1")


def point_map_option(args: argparse.Namespace) -> dict:
    """`from_pretrained`'s point_map_model, when --point-map-model names one."""
    return {"point_map_model": args.point_map_model} if args.point_map_model else {}


def announce_device(device: str | None, dtype: str | None) -> tuple[str, str]:
    """Resolve --device and --dtype, say on stderr what they chose and why ('device cpu, float32 (auto:
    this CPU has no bf16 instructions)'); (device name, dtype name)."""
    from ..models.dtype import describe_dtype_choice, dtype_name, resolve_dtype
    from ..pipeline import resolve_device

    dev = resolve_device(device)
    print(f"device {dev}, {describe_dtype_choice(dtype, dev)}", file=sys.stderr, flush=True)
    return str(dev), dtype_name(resolve_dtype(dtype, dev))
