"""Set Up Backend on this machine: the time of each step and the disk the environment takes, against
the yardstick measured in the same run, a plain `python -m venv` + `pip install torch` + `pip install
cupid.whl` (what install/setup.sh does; pip compiles every module to bytecode there).

The set-up runs as the add-on runs it (cupid_blender/setup/runner.py in a process of its own, from the
wheel install/build_extension.py bundles), with the PyTorch build it would choose here, or CUPID_TORCH
(e.g. torch==2.13.0 from this machine's index). Hugging Face is left as the environment has it: offline,
the weights step makes the tiny model (that time is printed on its own).
Run: .venv/bin/python bench/bench_setup.py [--python PATH (the Python that makes the environments)]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "install"))

import build_extension  # noqa: E402
from cupid_blender.setup.plan import SetupRequest  # noqa: E402
from cupid_blender.setup.process import SetupProcess, write_request  # noqa: E402
from cupid_blender.setup.system import Platform, venv_python  # noqa: E402
from cupid_blender.setup.torch_build import choose_torch, detect_nvidia  # noqa: E402


def disk(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1024 ** 3


def set_up(python: str, wheel: Path, root: Path) -> dict:
    plat = Platform.current()
    torch = choose_torch("AUTO", plat, detect_nvidia(plat, shutil.which), os.environ)
    request = SetupRequest(str(root), str(wheel), torch, [[python]])
    root.mkdir(parents=True)
    write_request(str(root / "request.json"), request)
    proc = SetupProcess(python, str(REPO / "cupid_blender"), str(root / "request.json"), str(root / "setup.log")).start()
    times, step, t_step, t0 = {}, None, time.monotonic(), time.monotonic()
    while True:
        status, outcome = proc.poll()
        if status.step != step:
            if step:
                times[step] = time.monotonic() - t_step
            step, t_step = status.step, time.monotonic()
        if outcome is not None:
            if step:
                times[step] = time.monotonic() - t_step
            break
        time.sleep(0.1)
    if outcome.state != "done":
        raise SystemExit(f"set-up {outcome.state}: {outcome.message} (log: {root / 'setup.log'})")
    return {"total": time.monotonic() - t0, "steps": times, "torch": torch.label,
            "disk": disk(root / "env"), "weights": outcome.record["weights"]}


def yardstick(python: str, wheel: Path, root: Path, torch_args: list) -> dict:
    t0 = time.monotonic()
    subprocess.run([python, "-m", "venv", str(root)], check=True)
    py = venv_python(str(root), Platform.current())
    for args in (torch_args, [str(wheel)]):
        out = subprocess.run([py, "-m", "pip", "install", "-q", *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"yardstick: pip install {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return {"total": time.monotonic() - t0, "disk": disk(root)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="the Python that makes the environments")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cupid-bench-setup-") as tmp:
        wheel = build_extension.build_wheel(Path(tmp) / "wheel")
        ours = set_up(args.python, wheel, Path(tmp) / "setup")
        plat = Platform.current()
        build = choose_torch("AUTO", plat, detect_nvidia(plat, shutil.which), os.environ)
        base = yardstick(args.python, wheel, Path(tmp) / "plain", build.pip_args())
    non_weights = ours["total"] - ours["steps"].get("weights", 0.0)
    print(f"PyTorch: {ours['torch']}; weights step: {ours['weights']}")
    print("| step | seconds |\n| --- | --- |")
    for step, sec in ours["steps"].items():
        print(f"| {step} | {sec:.0f} |")
    print(f"set-up total {ours['total']:.0f} s ({non_weights:.0f} s without the weights step), environment "
          f"{ours['disk']:.2f} GB")
    print(f"yardstick (venv + pip install torch + pip install cupid.whl, bytecode compiled): {base['total']:.0f} s, "
          f"{base['disk']:.2f} GB")
    print(f"ratio set-up without weights / yardstick: {non_weights / base['total']:.2f}")


if __name__ == "__main__":
    main()
