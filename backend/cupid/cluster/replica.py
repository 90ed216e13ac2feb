"""A model replica of `cupid serve --ray`: one loaded pipeline (one GPU where the cluster has them),
running one job at a time from the shared results directory and reporting to the job board.

The job's inputs were spooled by the ingress under `results_dir/inputs/<id>/`; the bundle is written
under `results_dir/work/<id>/` and zipped to `results_dir/results/<id>.zip`, which the ingress serves.
Progress goes to the board as it happens (at most every 0.2 s, and at every stage change); the
cancel flag is read back from it at every stage boundary and sampler step (at most every 0.2 s).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import Cancelled
from ..server import inputs as job_inputs
from ..server.storage import zip_dir
from .runtime import Placement, set_threads
from .worker import failure

POLL_S = 0.2


class ModelReplica:
    """The model deployment's class (wrapped by `serve.deployment` in `cupid.cluster.service`)."""

    def __init__(self, model: str, placement: Placement, dtype: str, board_name: str, namespace: str,
                 results_dir: str):
        import ray
        from ray import serve

        from ..models.dtype import dtype_name
        from ..pipeline import CupidPipeline

        set_threads(placement)
        self.results_dir = Path(results_dir)
        self.pipe = CupidPipeline.from_pretrained(model, device=placement.device, dtype=dtype)
        self.id = serve.get_replica_context().replica_id.unique_id
        self.board = ray.get_actor(board_name, namespace=namespace)
        info = {"device": str(self.pipe.device), "dtype": dtype_name(self.pipe.dtype),
                "node": ray.util.get_node_ip_address()}
        ray.get(self.board.register.remote(self.id, info, ray.get_runtime_context().current_actor))

    def run(self, job_id: str) -> None:
        """Run one job to its end and report it (the board watches this call for a lost replica)."""
        import ray

        spec = ray.get(self.board.claim.remote(job_id, self.id))
        if spec is None:
            return  # cancelled while it waited
        out = self.results_dir / "work" / job_id
        target = self.results_dir / "results" / f"{job_id}.zip"
        posted = {"stage": None, "at": 0.0}
        cancelled = {"flag": False, "at": 0.0}

        def progress(stage: str, fraction: float) -> None:
            now = time.monotonic()
            if stage != posted["stage"] or now - posted["at"] >= POLL_S:
                posted.update(stage=stage, at=now)
                self.board.progress.remote(job_id, stage, fraction)  # in order, not waited for

        def should_cancel() -> bool:
            now = time.monotonic()
            if not cancelled["flag"] and now - cancelled["at"] >= POLL_S:
                cancelled.update(flag=ray.get(self.board.is_cancelled.remote(job_id)), at=now)
            return cancelled["flag"]

        def keep_stage_one(first: Any) -> None:
            self.board.set_preview.remote(job_id, first.preview().to_dict())

        from ..run import reconstruct_bundle

        try:
            data = job_inputs.load(Path(spec["inputs_dir"]))
            bundle = reconstruct_bundle(self.pipe, data.photo, out, mask=data.pipeline_mask(spec["mode"]),
                                        mode=spec["mode"], seed=spec["seed"], steps=spec["steps"] or None,
                                        progress=progress, should_cancel=should_cancel, pnp=spec["pnp"],
                                        prompts=spec["prompts"],
                                        export={"photo_texture": spec.get("photo_texture", True)},
                                        **({"on_stage_one": keep_stage_one} if spec["mode"] == "object" else {}),
                                        **({"real_size": spec["real_size"]} if spec.get("real_size") is not None
                                           else {}))
            del data
            if should_cancel():
                raise Cancelled("the job was cancelled")
            self.board.progress.remote(job_id, "packing", 1.0)
            target.parent.mkdir(parents=True, exist_ok=True)
            zipped = zip_dir(Path(bundle), target, should_cancel=should_cancel)
            if should_cancel():
                raise Cancelled("the job was cancelled")
        except Exception as exc:  # the job ends with its error; the replica goes on serving
            shutil.rmtree(out, ignore_errors=True)
            target.unlink(missing_ok=True)
            if isinstance(exc, Cancelled):
                ray.get(self.board.finish.remote(job_id, self.id, "cancelled", "cancelled"))
                return
            code, message = failure(exc, self.results_dir)
            if code == "internal_error":  # no exception text in an answer (the log has it)
                message = f"internal error in the backend ({type(exc).__name__}); its log has the details"
            ray.get(self.board.finish.remote(job_id, self.id, "failed", message, {"code": code, "message": message}))
            return
        shutil.rmtree(out, ignore_errors=True)
        ray.get(self.board.finish.remote(job_id, self.id, "done", "finished", None, str(zipped),
                                         zipped.stat().st_size))

    def object_mask(self, photo: Any) -> Any:
        """POST /v1/segment in object mode: what object mode cuts out."""
        return self.pipe.object_mask(photo)

    def segment(self, photo: Any, picks: Any) -> Any:
        """POST /v1/segment in scene mode: segment-anything's masks for the picks (or automatic)."""
        return self.pipe.segment(photo, picks)

    def __del__(self) -> None:
        try:
            self.board.deregister.remote(self.id)
        except Exception:
            pass  # the board is gone first when the service stops
