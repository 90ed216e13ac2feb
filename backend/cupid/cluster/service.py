"""`cupid serve --ray`: the same /v1 API (routes, schemas, token and Host guard, error codes) served
through Ray Serve, with model replicas behind it.

One Ray Serve application: an ingress deployment that runs `cupid.server.create_app` over a
`RayJobStore`, and a model deployment (`ModelReplica`, one pipeline per replica, one GPU each where
the cluster has GPUs) that runs one job at a time, scaled by Serve: a fixed number of replicas, or
autoscaling on the jobs queued per replica. Job state lives in one `JobBoard` actor, so every
ingress replica answers for every job; inputs and results live under a results directory every
replica reaches (a local folder on one machine, shared storage on a cluster).
"""
from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import CliError
from ..server import inputs as job_inputs
from ..server.errors import Busy, Expired, NotFound, NotReady, TooLarge
from ..server.inputs import JobInputs
from ..server.settings import ServerSettings
from ..server.storage import WorkDir
from .board import JobBoard
from .replica import ModelReplica
from .runtime import Placement, cluster_placement, require_ray

APP = "cupid"
MODEL_DEPLOYMENT = "CupidModel"
INGRESS_DEPLOYMENT = "CupidIngress"
NAMESPACE = "cupid"
HEALTH_CACHE_S = 0.5


def raise_refusal(refusal: tuple[str, str, int] | None) -> None:
    """The board's plain-data refusal as the server's own error (answered with its code and status)."""
    if refusal is None:
        return
    code, message, retry_after = refusal
    if code == "busy":
        raise Busy(message, retry_after)
    raise {"upload_too_large": TooLarge, "not_found": NotFound, "not_ready": NotReady,
           "expired": Expired}[code](message)


class _Job:
    """A job's public fields as the board answered them."""

    def __init__(self, public: dict):
        self._public = public

    def public(self) -> dict:
        return self._public


class _ReplicaPipeline:
    """`POST /v1/segment` on a model replica (it waits for a free one, like a job)."""

    def __init__(self, handle: Any):
        self._handle = handle

    def object_mask(self, photo: Any) -> Any:
        return self._handle.object_mask.remote(photo).result()

    def segment(self, photo: Any, picks: Any) -> Any:
        return self._handle.segment.remote(photo, picks).result()


class RayJobStore:
    """The routes' `JobStore` on a Ray cluster: inputs spooled to the shared results directory,
    every question asked of the `JobBoard` actor."""

    def __init__(self, board: Any, results_dir: Path, instance: str, model: Any = None):
        self._board = board
        self._results = Path(results_dir)
        self._model = model
        self.instance = instance
        self._health: tuple[float, dict] | None = None

    def _ask(self, call: Any) -> Any:
        import ray

        return ray.get(call)

    def _snapshot(self) -> dict:
        """The board's health, asked at most every half second (one /v1/health reads it five times)."""
        now = time.monotonic()
        if self._health is None or now - self._health[0] > HEALTH_CACHE_S:
            self._health = (now, self._ask(self._board.health.remote()))
        return self._health[1]

    @property
    def model_loaded(self) -> bool:
        return self._snapshot()["model_loaded"]

    @property
    def model_error(self) -> str | None:
        return self._snapshot()["model_error"]

    def queue_length(self) -> int:
        return self._snapshot()["queue_length"]

    def usage(self) -> dict[str, int]:
        snap = self._snapshot()
        return {"queued_bytes": snap["queued_bytes"], "result_bytes": snap["result_bytes"]}

    def replicas(self) -> list[dict]:
        return self._snapshot()["replicas"]

    def check_room(self, nbytes: int = 0) -> None:
        raise_refusal(self._ask(self._board.check_room.remote(nbytes)))

    def submit(self, inputs: JobInputs, mode: str, seed: int, steps: int, pnp: str | None = None,
               prompts: Any = None, real_size: bool | None = None, photo_texture: bool = True) -> _Job:
        job_id = secrets.token_hex(8)
        directory = self._results / "inputs" / job_id
        job_inputs.spool(inputs, directory)
        spec = {"mode": mode, "seed": seed, "steps": steps, "pnp": pnp, "prompts": prompts,
                "real_size": real_size, "photo_texture": photo_texture, "inputs_dir": str(directory)}
        try:
            refusal, public = self._ask(self._board.submit.remote(job_id, spec, inputs.nbytes))
        except BaseException:
            job_inputs.remove(directory)
            raise
        if refusal is not None:
            job_inputs.remove(directory)
            raise_refusal(refusal)
        self._health = None
        return _Job(public)

    def submit_refine(self, from_job: str, camera: dict, steps: int, photo_texture: bool = True) -> _Job:
        raise NotFound(f"job {from_job}'s stage 1 is not kept by a Ray cluster service (a refine runs on the "
                       f"single-machine 'cupid serve'): run the reconstruction again")

    def preview(self, job_id: str) -> dict:
        refusal, preview = self._ask(self._board.preview.remote(job_id))
        raise_refusal(refusal)
        return preview

    def pipeline(self) -> _ReplicaPipeline:
        if self._model is None:
            from ray import serve

            self._model = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=APP)
        return _ReplicaPipeline(self._model)

    def get(self, job_id: str) -> _Job | None:
        public = self._ask(self._board.status.remote(job_id))
        return None if public is None else _Job(public)

    def cancel(self, job_id: str) -> _Job | None:
        public = self._ask(self._board.cancel.remote(job_id))
        return None if public is None else _Job(public)

    def open_result(self, job_id: str) -> tuple[BinaryIO, _Job]:
        refusal, path = self._ask(self._board.result.remote(job_id))
        raise_refusal(refusal)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            self._ask(self._board.result_missing.remote(job_id))
            raise Expired(f"the result of job {job_id} has expired (its file was removed); run it again") from None
        return fh, _Job(self._ask(self._board.status.remote(job_id)))

    def close(self) -> None:
        """Nothing to stop here: the driver (`RayService.close`) owns the board and the deployments."""


class CupidIngress:
    """The ingress deployment: the service's FastAPI app over a RayJobStore, built on each replica."""

    def __init__(self, settings: ServerSettings, board_name: str, results_dir: str, instance: str, model: Any):
        self.settings, self.board_name, self.results_dir, self.instance = settings, board_name, results_dir, instance
        self.model = model

    def __serve_build_asgi_app__(self) -> Any:
        import ray

        from ..server import create_app

        board = ray.get_actor(self.board_name, namespace=NAMESPACE)
        return create_app(self.settings, jobs=RayJobStore(board, Path(self.results_dir), self.instance, self.model))


@dataclass(frozen=True)
class ServiceOptions:
    """`cupid serve --ray`'s own choices (the rest are the server's settings)."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    replicas: int | None = 1               # a fixed number, or None with min/max for autoscaling
    min_replicas: int = 1
    max_replicas: int = 1
    retry: bool = False
    results_dir: str | None = None         # default: a private folder in this machine's temp dir
    cpus_per_replica: float | None = None  # CPU replicas: default the CPUs shared out over the replicas


def _model_options(options: ServiceOptions, placement: Placement) -> dict:
    scaling: dict[str, Any]
    if options.replicas is not None:
        scaling = {"num_replicas": options.replicas}
    else:
        scaling = {"autoscaling_config": {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                                          "initial_replicas": max(options.min_replicas, 1),
                                          "target_ongoing_requests": 1, "upscale_delay_s": 2.0,
                                          "downscale_delay_s": 120.0}}
    return {"name": MODEL_DEPLOYMENT, "max_ongoing_requests": 1, "ray_actor_options": placement.ray_options(),
            "graceful_shutdown_timeout_s": 5.0, **scaling}


def _deployment_messages() -> str:
    """Why the application's deployments failed, as Serve tells it (the last line of each message)."""
    from ray import serve

    try:
        app = serve.status().applications.get(APP)
    except Exception:
        return ""
    if app is None:
        return ""
    lines = []
    for name, dep in app.deployments.items():
        text = (dep.message or "").strip().splitlines()
        if text:
            lines.append(f"{name}: {text[-1]}")
    return "; ".join(lines)


class RayService:
    """The running application: start it with `start()`, stop it with `close()` (the process that
    started it owns the board, the deployments and the results folder)."""

    def __init__(self, settings: ServerSettings, options: ServiceOptions):
        self.settings, self.options = settings, options
        self.instance = secrets.token_hex(8)
        self.board: Any = None
        self.placement: Placement | None = None
        self._workdir: WorkDir | None = None
        self.results_dir: Path | None = None

    def _make_results_dir(self) -> Path:
        if self.options.results_dir is None:
            self._workdir = WorkDir()
            return self._workdir.path
        root = Path(self.options.results_dir).expanduser()
        try:
            root.mkdir(parents=True, exist_ok=True)
            path = root / f"cupid-serve-{self.instance}"
            path.mkdir(mode=0o700)
        except OSError as exc:
            raise CliError(f"cannot use --results-dir {root}: {exc.strerror or exc}") from None
        return path

    def start(self) -> "RayService":
        ray = require_ray()
        from ray import serve

        opts = self.options
        count = opts.replicas if opts.replicas is not None else max(opts.max_replicas, 1)
        placement, fits = cluster_placement(opts.device, count)
        if opts.replicas is not None and fits < count:
            raise CliError(f"the Ray cluster has room for {fits} replica{'s' if fits != 1 else ''} "
                           f"({'GPUs' if placement.num_gpus else 'CPU cores'}), not {count}")
        if opts.cpus_per_replica is not None and placement.device == "cpu":
            placement = Placement("cpu", 0.0, opts.cpus_per_replica)
        self.placement = placement
        from ..models.dtype import dtype_name, resolve_dtype

        # what /v1/health says for the service (each replica lists its own in "replicas")
        self.settings = replace(self.settings, device=placement.device,
                                dtype=dtype_name(resolve_dtype(opts.dtype, placement.device)))
        self.results_dir = self._make_results_dir()
        board_name = f"cupid-board-{self.instance}"
        self.board = ray.remote(JobBoard).options(
            name=board_name, namespace=NAMESPACE, num_cpus=0, max_concurrency=1000).remote(
            instance=self.instance, results_dir=str(self.results_dir), app_name=APP,
            model_deployment=MODEL_DEPLOYMENT, max_queue=self.settings.max_queue,
            max_queued_bytes=self.settings.max_queued_bytes, max_result_bytes=self.settings.max_result_bytes,
            result_ttl=self.settings.result_ttl, retry=opts.retry)
        model = serve.deployment(ModelReplica, **_model_options(opts, placement)).bind(
            opts.model, placement, opts.dtype, board_name, NAMESPACE, str(self.results_dir))
        ingress = serve.deployment(serve.ingress()(CupidIngress), name=INGRESS_DEPLOYMENT, num_replicas=1,
                                   ray_actor_options={"num_cpus": 0}).bind(
            self.settings, board_name, str(self.results_dir), self.instance, model)
        quiet = {"log_level": "WARNING", "enable_access_log": False}
        serve.start(http_options={"host": self.settings.host, "port": self.settings.port}, logging_config=quiet)
        try:
            serve.run(ingress, name=APP, route_prefix="/", logging_config=quiet)
        except Exception as exc:
            why = _deployment_messages() or str(exc)
            self.close()
            raise CliError(f"the Ray Serve application did not start: {why}") from None
        return self

    def describe(self) -> str:
        opts, placement = self.options, self.placement
        each = "1 GPU" if placement and placement.num_gpus else f"{placement.threads if placement else 1} CPU core(s)"
        count = (f"{opts.replicas}" if opts.replicas is not None
                 else f"{opts.min_replicas} to {opts.max_replicas} (autoscaling)")
        return f"{count} model replicas on {placement.device if placement else '?'}, {each} each"

    def replica_actor(self, replica_id: str) -> Any:
        """The Ray actor of a model replica (for tests and operators: `ray.kill` it to see `worker_lost`)."""
        import ray

        return ray.get_actor(f"SERVE_REPLICA::{APP}#{MODEL_DEPLOYMENT}#{replica_id}", namespace="serve")

    def close(self) -> None:
        import ray
        from ray import serve

        try:
            serve.delete(APP)
        except Exception:
            pass  # already gone, or Serve never started
        if self.board is not None:
            ray.kill(self.board)
            self.board = None
        if self._workdir is not None:
            self._workdir.remove()
        elif self.results_dir is not None:
            shutil.rmtree(self.results_dir, ignore_errors=True)


__all__ = ["RayService", "ServiceOptions", "RayJobStore", "CupidIngress", "APP", "MODEL_DEPLOYMENT"]
