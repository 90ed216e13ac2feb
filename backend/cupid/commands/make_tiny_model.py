"""`cupid make-tiny-model DIR`: a tiny random-weight model in the official format (see cupid.tiny)."""
from __future__ import annotations

import argparse

NAME = "make-tiny-model"
HELP = "write a tiny model in the official checkpoint format, to run the whole pipeline on a CPU in seconds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="where to write pipeline.json and ckpts/")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--refit", action="store_true",
                   help="fit seed 0's stage-1 decoders from scratch (minutes) instead of reading the packaged fit")


def run(args: argparse.Namespace) -> int:
    from ..tiny import make_tiny_model

    out = make_tiny_model(args.directory, seed=args.seed, refit=args.refit)
    print(f"wrote a tiny CUPID model to {out} (random weights: it checks the pipeline, not the results)")
    return 0
