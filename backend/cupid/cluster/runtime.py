"""Joining Ray (a local runtime or a cluster) and deciding what one worker holds.

One worker (a batch actor or a model replica) holds one loaded pipeline: one GPU each where the
cluster has GPUs, else a share of the CPUs (torch's threads are set to that share, so workers on
one machine do not fight over cores).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ..errors import CliError

INSTALL_HINT = 'install the backend\'s cluster extra: pip install -e "backend[cluster]"'


def require_ray() -> Any:
    """The `ray` module, or a one-line CliError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CliError(f"Ray is not installed: {INSTALL_HINT}") from None
    return ray


def connect(address: str | None, *, num_cpus: int | None = None, worker_logs: bool = False) -> bool:
    """Join the Ray cluster at `address` ('auto': the one started on this machine with `ray start`),
    or start a local runtime when `address` is None. True when this call connected (False: this
    process was already connected, and stays so). `worker_logs`: the workers' warnings and errors
    appear here too (a service's log)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    logging.getLogger("ray").setLevel(logging.ERROR)  # Ray's start-up notes are not the user's business
    quiet = {"logging_level": logging.ERROR, "log_to_driver": worker_logs}
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CliError(f"cannot join the Ray cluster at {address}: {exc} (start one with "
                           f"'ray start --head' on its head machine)") from None
        return True
    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **quiet)
    return True


def disconnect() -> None:
    """Leave Ray (a local runtime started by `connect` stops with it)."""
    ray = require_ray()
    if ray.is_initialized():
        ray.shutdown()


@dataclass(frozen=True)
class Placement:
    """What each worker asks Ray for and the device its pipeline runs on."""

    device: str        # "cuda" or "cpu" (or what --device named)
    num_gpus: float
    num_cpus: float

    def ray_options(self) -> dict[str, float]:
        return {"num_gpus": self.num_gpus, "num_cpus": self.num_cpus}

    @property
    def threads(self) -> int:
        """torch's intra-op threads for a CPU worker."""
        return max(int(self.num_cpus), 1)

    def describe(self, count: int) -> str:
        each = "1 GPU" if self.num_gpus else f"{self.threads} CPU core{'s' if self.threads > 1 else ''}"
        return f"{count} worker{'s' if count != 1 else ''} on {self.device}, {each} each"


def place_workers(device: str, count: int, cluster: dict[str, float], node_cpus: list[float]) -> tuple[Placement, int]:
    """(placement, workers) for `count` workers on a cluster with these total resources and per-node
    CPUs. auto/cuda: one GPU per worker where the cluster has GPUs (cuda without any is an error);
    cpu (or auto without GPUs): the CPUs shared out, at most one machine's worth each, at least one
    core each. More workers than GPUs or cores are cut to what fits (the caller says so)."""
    if count < 1:
        raise CliError("the number of workers must be at least 1")
    gpus = int(cluster.get("GPU", 0))
    if device in ("auto", "cuda") and gpus:
        return Placement("cuda", 1.0, 1.0), min(count, gpus)
    if device == "cuda":
        raise CliError("--device cuda was asked for but the Ray cluster has no GPU")
    if device == "mps":
        raise CliError("--device mps cannot be shared out by Ray: use auto or cpu")
    cpus = int(cluster.get("CPU", 1))
    fits = max(min(count, cpus), 1)
    per = max(min(cpus // fits, int(max(node_cpus, default=1))), 1)
    return Placement("cpu", 0.0, float(per)), fits


def cluster_placement(device: str, count: int) -> tuple[Placement, int]:
    """`place_workers` for the cluster this process has joined."""
    ray = require_ray()
    nodes = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return place_workers(device, count, ray.cluster_resources(), nodes)


def set_threads(placement: Placement) -> None:
    """In a worker: torch's threads to the worker's share of cores (a GPU worker leaves them)."""
    if placement.device == "cpu":
        import torch

        torch.set_num_threads(placement.threads)
