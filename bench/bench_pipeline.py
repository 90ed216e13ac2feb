"""Stage-by-stage time and peak memory of the full-size CUPID pipeline on the CPU (random weights, real shapes).

A model directory in the release's layout is written first (pipeline.json with the release's role stems,
ckpts/NAME.json + NAME.safetensors with torso tensors in float16 as the release stores them, DINOv2
ViT-L/14-reg as a hub .pth), with `cupid.tiny`'s seeded random weights (N(0, 0.05²), norm gains +1, as the
parity fixtures); then `CupidPipeline.from_pretrained` loads it and every stage runs through the pipeline's
own methods at a reduced step count.

Random weights decode a meaningless stage-1 structure (about half the 64³ grid, and a UV cube that fits
no camera), so stage 1 (flow sampling + both decoders + decode_structure) is timed as the code runs it
and its output is dropped; the pose solve and stage 2 get Suzanne's 64³ surface voxels and their exact
UV cube in a fixed camera, i.e. a real object's size. Memory (Linux only: /proc/self): the run's process
resets its peak RSS before each stage, so a stage's peak includes every network the pipeline keeps
resident, as in real use; writer and run are separate subprocesses. --model-dir keeps the written model
(about 4 GB) for later runs.

The flows' matrix work is counted (torch's FlopCounterMode) and set against this machine's matrix rate,
measured in the same run: the time the whole 25-step job would need at the low-precision (bf16 on the
CPU, fp16 on CUDA) and at the float32 rate is the yardstick printed beside the estimate. On CUDA
(`--device cuda`) the same script runs unchanged; there peak memory is the GPU's (max_memory_allocated).

Run: .venv/bin/python bench/bench_pipeline.py [--steps 2] [--dtype auto|float32|bfloat16|float16]
     [--device cpu|cuda|auto] [--model-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "fixtures" / "trellis_image_large_manifest.json"
RELEASE_JSON = ROOT / "tests" / "assets" / "cupid_release_ckpts.json"
DINO_FILE = "ckpts/dinov2_vitl14_reg4_pretrain.pth"
GB = 2 ** 30


# ---------------------------------------------------------------------------- writing the model

def release_specs() -> dict[str, dict[str, Any]]:
    """Role -> {"name", "args"} of every release checkpoint: CUPID's own from the release JSONs that
    tests/test_release_manifest.py checks, TRELLIS-image-large's from its manifest."""
    from cupid import config

    release = json.loads(RELEASE_JSON.read_text())
    manifest = json.loads(MANIFEST.read_text())
    specs = {}
    for role, stem in config.RELEASE_MODELS.items():
        entry = release.get(stem) or manifest[stem.rsplit("/", 1)[-1]]
        specs[role] = {"name": entry["name"], "args": entry["args"]}
    return specs


def write_model(model_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Write the full-size random model directory, one network in memory at a time."""
    from cupid import config
    from cupid.models import build_model
    from cupid.models.dinov2 import DinoV2
    from cupid.tiny import randomize_weights, save_checkpoint

    gen = torch.Generator().manual_seed(seed)
    params = {}
    for role, spec in release_specs().items():
        model = build_model(spec["name"], spec["args"])  # use_fp16 stores the torso in float16, as released
        randomize_weights(model, gen)
        stem = model_dir / config.RELEASE_MODELS[role]
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, stem.parent, stem.name, spec)
        params[role] = sum(p.numel() for p in model.parameters())
        del model
        print(f"  wrote {role} ({params[role] / 1e6:.0f} M parameters)", file=sys.stderr, flush=True)
    dino = DinoV2.vitl14_reg4()
    randomize_weights(dino, gen)
    torch.save({k: v.detach().clone() for k, v in dino.state_dict().items()}, model_dir / DINO_FILE)
    params["dinov2"] = sum(p.numel() for p in dino.parameters())
    del dino
    pipeline = {"name": "Cupid3DPipeline", "args": {
        "models": config.RELEASE_MODELS, "image_cond_model": DINO_FILE,
        "slat_normalization": {"mean": [0.0] * 8, "std": [1.0] * 8}}}  # samplers: cupid.config's defaults
    (model_dir / "pipeline.json").write_text(json.dumps(pipeline, indent=1))
    return {"params": params}


# ---------------------------------------------------------------------------- measuring

def _status_gb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile) in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GB
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class StageMeter:
    """Wall time, peak memory during the stage (RSS on the CPU, allocated memory on CUDA) and RSS at its
    start, per named stage. (No FLOP counting here: torch's counter slows a network by ~30% on the CPU.)"""

    def __init__(self, device: torch.device) -> None:
        self.rows: list[dict[str, Any]] = []
        self.per_stage_peak = True
        self.device = device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        print(f"  {stage} ...", file=sys.stderr, flush=True)
        self.per_stage_peak &= _reset_peak()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start_rss = _status_gb("VmRSS")
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        seconds = time.perf_counter() - t0
        peak = _status_gb("VmHWM")  # the running peak where it could not be reset
        row = {"stage": stage, "seconds": seconds, "peak_gb": peak, "start_gb": start_rss,
               "end_gb": _status_gb("VmRSS"), "end_anon_gb": _status_gb("RssAnon"),
               "end_file_gb": _status_gb("RssFile")}
        if self.device.type == "cuda":
            row["gpu_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / GB
        self.rows.append(row)
        print(f"  {stage}: {seconds:.1f} s, peak {peak:.2f} GB", file=sys.stderr, flush=True)


def _count_cpu_flash_attention() -> None:
    """torch's FLOP counter knows the CUDA attention kernels; teach it the CPU flash kernel (same count)."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_registry or op.default in flop_registry:
        return

    @register_flop_formula(op)
    def _flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)   # the counter hands formulas shapes


def matrix_rate(dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """FLOP/s of a 2048x1024 @ 1024x4096 matrix product in `dtype` on `device` (fastest of `repeats`)."""
    a = torch.randn(2048, 1024, device=device).to(dtype)
    b = torch.randn(1024, 4096, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048 * 1024 * 4096 / best


class ForwardTimer:
    """Counts and times a module's forward calls through hooks (nested calls are timed on their own)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls, self.seconds, self._t0 = 0, 0.0, 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *_: Any) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self.calls += 1
        self.seconds += time.perf_counter() - self._t0


def guided_steps(sampler: Any) -> tuple[int, int]:
    """(steps inside the guidance interval, steps outside it) of one sampling run."""
    guided = sum(sampler.guided(float(t), True) for t in sampler.timesteps()[:-1])
    return guided, sampler.steps - guided


def step_costs(sampler: Any, model: torch.nn.Module, x: Any, cond: Any, neg_cond: Any,
               device: torch.device) -> tuple[float, int, int]:
    """A step outside the guidance interval (the conditional pass alone): its seconds; then, in untimed
    runs, its matrix FLOPs and those of a guided step as the sampler runs it (both passes, one batch of
    two unless `batch_guidance` is off; the unconditional pass's cross-attention is a constant and is
    not computed, so a guided step is less than twice the work)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cupid.sampler import GuidancePair

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    sampler.velocity(model, x, 0.0, cond, None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    flops = []
    t_guided = 0.5 * (sampler.cfg_interval[0] + sampler.cfg_interval[1])
    for t, neg in ((0.0, None), (t_guided, neg_cond)):
        pair = GuidancePair.build(x, cond, neg, {}) if neg is not None and sampler.batch_guidance else None
        counter = FlopCounterMode(display=False)
        with counter:
            sampler.velocity(model, x, t, cond, neg, pair)
        flops.append(counter.get_total_flops())
    return seconds, flops[0], flops[1]


def synthetic_photo(width: int = 1024, height: int = 768) -> np.ndarray:
    """An RGBA cut-out (an elliptical object on a transparent background): preprocessing only needs a mask."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    inside = ((x - width * 0.5) / (width * 0.3)) ** 2 + ((y - height * 0.5) / (height * 0.4)) ** 2 < 1
    rgb = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 37.0) * np.cos(y / 23.0)], -1) * 255
    return np.concatenate([rgb, inside[..., None] * 255.0], -1).astype(np.uint8)


def suzanne_structure() -> Any:
    """Suzanne's 64³ surface voxels with their exact UV cube in the tiny model's 518² crop camera."""
    from cupid.geometry import uv_cube
    from cupid.pipeline.stage1 import structure_from_cubes
    from cupid.tiny import TINY_CAMERA
    from tests.helpers.meshes import suzanne, surface_voxels

    occ = np.zeros((64, 64, 64), dtype=bool)
    occ[tuple(surface_voxels(*suzanne(), res=64).T)] = True
    K, R, t = TINY_CAMERA
    return structure_from_cubes(occ, uv_cube(occ, K, R, t, (518, 518)))


@torch.no_grad()
def run_pipeline(model_dir: Path, steps: int, dtype: str, device: str, seed: int) -> dict[str, Any]:
    """Load the model and run each stage once through the pipeline's own methods; returns rows + facts."""
    from cupid.export import ExportOptions, write_bundle
    from cupid.models.dtype import dtype_name
    from cupid.pipeline.pipeline import CupidPipeline, resolve_device
    from cupid.pipeline.stage1 import pose_from_structure
    from cupid.preprocess import preprocess
    from cupid.progress import Progress
    from cupid.reconstruction import ReconstructedObject, Reconstruction
    from cupid.sparse import SparseTensor

    _count_cpu_flash_attention()
    dev = resolve_device(device)
    meter = StageMeter(dev)
    job = Progress()
    with meter("load"):
        pipe = CupidPipeline.from_pretrained(model_dir, device=str(dev), dtype=dtype)
    timers = {role: ForwardTimer(module) for role, module in pipe.models.items()}
    photo = synthetic_photo()
    with meter("preprocess"):
        processed = preprocess(photo)
    with meter("condition"):
        cond, visual = pipe.condition(processed)
    with meter("structure"):
        random_structure = pipe.sample_structure(cond, seed, steps, job)
    structure = suzanne_structure()
    with meter("pose"):
        pose, solution = pose_from_structure(structure, processed.crop.offset, processed.crop.size,
                                             processed.size, seed=seed)
    with meter("latent"):
        slat = pipe.sample_latent(structure, solution.pose, cond, visual, seed, steps, job)
    with meter("decode"):
        mesh, gaussians = pipe.decode(slat)
    colors = None if mesh.vertex_attrs is None else mesh.vertex_attrs[:, :3].float().cpu().numpy()
    spec = ReconstructedObject(name="object_0", vertices=mesh.vertices.float().cpu().numpy(),
                               faces=mesh.faces.cpu().numpy(), vertex_colors=colors, gaussians=gaussians, camera=pose)
    out_dir = Path(tempfile.mkdtemp(prefix="cupid_bench_bundle_"))
    try:
        with meter("export"):
            write_bundle(Reconstruction(processed.photo, pose, [spec]), out_dir,
                         ExportOptions.from_settings(pipe.export_settings))
        counts = json.loads((out_dir / "scene.json").read_text())["objects"][0]["counts"]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    sampled = {role: (t.calls, t.seconds) for role, t in timers.items()}   # the run itself, before the extras
    # per flow, for the estimate: a step outside the guidance interval timed, and both kinds counted
    ss_flow, sl_flow = pipe.models["sparse_structure_flow_model"], pipe.models["slat_flow_model"]
    res = ss_flow.resolution
    costs = {"sparse_structure_flow_model": step_costs(
        pipe.ss_sampler, ss_flow, torch.randn(1, ss_flow.in_channels, res, res, res, device=dev), cond,
        torch.zeros_like(cond), dev)}
    coords = slat.coords
    uvs = SparseTensor(torch.rand(coords.shape[0], 2, device=dev), coords)
    cond_d = {"dino_cond": cond, "visual_cond": visual}
    neg_d = {"dino_cond": torch.zeros_like(cond), "visual_cond": torch.zeros_like(visual)}
    cond_d["voxel_cond"], neg_d["voxel_cond"] = sl_flow.voxel_condition(uvs, cond_d), sl_flow.voxel_condition(uvs, neg_d)
    costs["slat_flow_model"] = step_costs(
        pipe.slat_sampler, sl_flow, SparseTensor(torch.randn(coords.shape[0], sl_flow.out_channels, device=dev), coords),
        cond_d, neg_d, dev)
    samplers = {"sparse_structure_flow_model": pipe.ss_sampler, "slat_flow_model": pipe.slat_sampler}
    flows = {}
    for role, sampler in samplers.items():
        run = _with_steps(sampler, steps)
        flows[role] = {"calls": sampled[role][0], "seconds": sampled[role][1],
                       "unguided_step_s": costs[role][0], "unguided_step_flops": costs[role][1],
                       "guided_step_flops": costs[role][2],
                       "default_steps": sampler.steps,
                       "run_steps": guided_steps(run), "default_run_steps": guided_steps(sampler),
                       "batch_guidance": sampler.batch_guidance}
    low = torch.float16 if dev.type == "cuda" else torch.bfloat16
    return {"rows": meter.rows, "per_stage_peak": meter.per_stage_peak, "flows": flows,
            "modules": {role: {"calls": n, "seconds": sec} for role, (n, sec) in sampled.items()},
            "voxels": int(structure.occupancy.sum()), "random_stage1_voxels": int(random_structure.occupancy.sum()),
            "pose_inliers": float(solution.inlier_ratio), "mesh_faces": int(mesh.faces.shape[0]),
            "export_counts": counts, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": str(dev), "dtype": dtype_name(pipe.dtype),
            "rates": {dtype_name(low): matrix_rate(low, dev), "float32": matrix_rate(torch.float32, dev)},
            "weights_gb": sum(p.numel() * p.element_size() for m in pipe.models.values() for p in m.parameters()) / GB
            + sum(p.numel() * p.element_size() for p in pipe.conditioner.parameters()) / GB}


def _with_steps(sampler: Any, steps: int) -> Any:
    import dataclasses

    return dataclasses.replace(sampler, steps=steps)


# ---------------------------------------------------------------------------- driver

def _child(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run this file with `args` in a fresh interpreter; its last JSON line and the wall time."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "backend"), str(ROOT)]))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode or not lines:
        raise SystemExit(f"{' '.join(args)} failed (exit {res.returncode}); see the messages above")
    return json.loads(lines[-1]), time.perf_counter() - t0


def _s(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 1 else f"{seconds:.1f}"


def report(r: dict[str, Any], steps: int, write_s: float | None) -> None:
    """Print the markdown table (pasteable into the README), the 25-step estimate against the machine's
    matrix-rate limit, and the notes."""
    rows = {row["stage"]: row for row in r["rows"]}
    ss, sl = r["flows"]["sparse_structure_flow_model"], r["flows"]["slat_flow_model"]
    mod = r["modules"]
    total = sum(row["seconds"] for row in rows.values())
    cuda = "gpu_peak_gb" in r["rows"][0]
    peak_key = "gpu_peak_gb" if cuda else "peak_gb"
    peak = max(row[peak_key] for row in rows.values())
    print(f"\nCUPID full-size pipeline on {r['device']} ({r['threads']} CPU threads, torch {r['torch']}): "
          f"{r['dtype']}, random weights, {steps} sampler steps per flow (default {ss['default_steps']}), stage 2 on "
          f"{r['voxels']} voxels (Suzanne at 64³); weights in memory {r['weights_gb']:.2f} GB\n")
    mem = "peak GPU memory (GB)" if cuda else "peak RSS (GB)"
    print(f"| stage | time (s) | {mem} | peak − RSS at start (GB) |")
    print("| --- | ---: | ---: | ---: |")
    for name, row in rows.items():
        print(f"| {name} | {_s(row['seconds'])} | {row[peak_key]:.2f} | {row['peak_gb'] - row['start_gb']:.2f} |")
    print(f"| **total** | **{total:.1f}** | **{peak:.2f}** | |")

    # the default-step job: each flow's guided steps at the measured guided-step time, its other steps at
    # the measured conditional-only step; everything else as measured once
    est_s, est_flops = total, 0.0
    lines = []
    for name, f in (("stage 1", ss), ("stage 2", sl)):
        (g_run, u_run), (g_def, u_def) = f["run_steps"], f["default_run_steps"]
        guided_s = (f["seconds"] - u_run * f["unguided_step_s"]) / max(g_run, 1)
        flow_flops, guided_flops = f["unguided_step_flops"], f["guided_step_flops"]
        est_s += (g_def - g_run) * guided_s + (u_def - u_run) * f["unguided_step_s"]
        est_flops += guided_flops * g_def + flow_flops * u_def
        lines.append(f"{name}: {g_def} guided steps at {guided_s:.1f} s + {u_def} conditional-only at "
                     f"{f['unguided_step_s']:.1f} s ({guided_flops / 1e12:.1f} / {flow_flops / 1e12:.1f} TFLOP each; "
                     f"guidance as {'one batch of two' if f['batch_guidance'] else 'two forwards'})")
    low = next(k for k in r["rates"] if k != "float32")
    print(f"\nA {ss['default_steps']}-step job (estimate from the per-step times above): **{est_s / 60:.1f} min**, "
          f"its flows {est_flops / 1e12:.0f} TFLOP of matrix work (DINOv2 and the decoders, run once, are not "
          f"counted). This machine's matrix rate, measured now: "
          f"{low} {r['rates'][low] / 1e9:.0f} GFLOP/s, float32 {r['rates']['float32'] / 1e9:.0f} GFLOP/s, so "
          f"that work alone needs {est_flops / r['rates'][low] / 60:.1f} min at the {low} rate and "
          f"{est_flops / r['rates']['float32'] / 60:.1f} min at the float32 rate; this run is "
          f"{est_flops / r['rates'][low] / est_s:.2f}× the {low} limit and "
          f"{est_flops / r['rates']['float32'] / est_s:.2f}× the float32 limit (1 = at the limit).")
    print("\n".join(f"- {ln}" for ln in lines))

    load = rows["load"]
    notes = [
        f"load: CupidPipeline.from_pretrained of a just-written directory (warm page cache); afterwards "
        f"{load['end_anon_gb']:.2f} GB is anonymous memory and {load['end_file_gb']:.2f} GB file pages.",
        f"structure: stage-1 flow {ss['calls']} forwards, occupancy decoder "
        f"{_s(mod['sparse_structure_decoder']['seconds'])} s, UV decoder "
        f"{_s(mod['sparse_structure_uv_decoder']['seconds'])} s; its random output "
        f"({r['random_stage1_voxels']} voxels) is dropped.",
        f"pose: solve_camera on Suzanne's {r['voxels']} exact voxel/uv pairs (inlier ratio {r['pose_inliers']:.2f}).",
        f"latent: stage-2 flow {sl['calls']} forwards, plus the SLat encoder once per run for the conditional "
        f"pass only ({mod['slat_encoder']['calls']} calls, {_s(mod['slat_encoder']['seconds'])} s).",
        f"decode: mesh decoder + FlexiCubes {_s(mod['slat_decoder_mesh']['seconds'])} s, Gaussian decoder "
        f"{_s(mod['slat_decoder_gs']['seconds'])} s; random weights give a noisy {r['mesh_faces']}-face mesh.",
        f"export: write_bundle with the default ExportOptions -> {r['export_counts']}.",
        ("peak: torch.cuda.max_memory_allocated per stage." if cuda else
         "peak RSS: the process's resident peak during the stage, every loaded network included; total = the "
         "largest." if r["per_stage_peak"] else "peak RSS: the kernel refused to reset it: each is the peak so far."),
        "TFLOP: torch's FLOP counter (matrix products, convolutions and attention) on one extra guided and "
        "one extra conditional-only step per flow; the sparse convolutions' gathers are not FLOPs.",
    ]
    if write_s is not None:
        notes.append(f"Writing the random model directory took {write_s:.0f} s (not part of the pipeline).")
    print("\nNotes (GB = GiB):\n" + "\n".join(f"- {n}" for n in notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="sampler steps of each flow (default 2)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="compute dtype (auto: as the pipeline picks it for the device)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, help="write the random model here (kept) or reuse it if present")
    parser.add_argument("--child-write", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-run", type=Path, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child_write:
        print(json.dumps(write_model(a.child_write, a.seed)))
        return
    if a.child_run:
        print(json.dumps(run_pipeline(a.child_run, a.steps, a.dtype, a.device, a.seed)))
        return
    model_dir = a.model_dir or Path(tempfile.mkdtemp(prefix="cupid_bench_model_"))
    try:
        write_s = None
        if not (model_dir / "pipeline.json").is_file():
            print(f"writing the full-size random model to {model_dir} ...", file=sys.stderr, flush=True)
            model_dir.mkdir(parents=True, exist_ok=True)
            _, write_s = _child(["--child-write", str(model_dir), "--seed", str(a.seed)])
        print("running the pipeline ...", file=sys.stderr, flush=True)
        result, _ = _child(["--child-run", str(model_dir), "--steps", str(a.steps), "--dtype", a.dtype,
                            "--device", a.device, "--seed", str(a.seed)])
    finally:
        if a.model_dir is None:
            shutil.rmtree(model_dir, ignore_errors=True)
    report(result, a.steps, write_s)


if __name__ == "__main__":
    main()
