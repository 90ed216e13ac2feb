"""The `cupid` command line: a full run on the tiny model, and bad input as one clear line, no traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "monkey.png"


def cupid(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'backend'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cupid", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny"
    r = cupid("make-tiny-model", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_reconstruct_writes_a_bundle(tiny, tmp_path):
    r = cupid("reconstruct", str(PHOTO), "-o", str(tmp_path / "out"), "--model", str(tiny), "--seed", "1",
              "--steps", "2", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    scene = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert scene["schema"] == "cupid.scene/1" and scene["objects"][0]["glb"] == "object_0.glb"
    assert "latent" in r.stderr  # the per-stage progress bars
    assert "device cpu, " in r.stderr and " (auto: this CPU has" in r.stderr   # the precision and why


def test_reconstruct_pnp_flag(tiny, tmp_path):
    r = cupid("reconstruct", str(PHOTO), "-o", str(tmp_path / "out"), "--model", str(tiny), "--steps", "1",
              "--device", "cpu", "--pnp", "dlt")
    assert r.returncode == 0, r.stderr
    # stderr is not a terminal here: progress as plain lines (no bar redrawn with carriage returns)
    assert "\r" not in r.stderr and "structure" in r.stderr and "100% of job" in r.stderr, r.stderr
    K = json.loads((tmp_path / "out" / "scene.json").read_text())["camera"]["K"]
    assert K[0][0] != K[1][1] and K[0][1] == 0  # the release's DLT: fx != fy; skew not exported
    r = cupid("reconstruct", str(PHOTO), "-o", str(tmp_path / "o2"), "--model", str(tiny), "--pnp", "epnp")
    assert r.returncode == 2 and "--pnp" in r.stderr and "Traceback" not in r.stderr


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    text = tmp / "notes.png"
    text.write_text("shopping list\n")
    corrupt = tmp / "corrupt.png"
    corrupt.write_bytes(PHOTO.read_bytes()[:300])
    empty = tmp / "empty.png"
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(empty)
    tiny1 = tmp / "one.png"
    Image.new("RGBA", (1, 1), (255, 0, 0, 255)).save(tiny1)
    mask = tmp / "mask.png"
    Image.new("L", (10, 10), 255).save(mask)
    return [
        ([str(text)], "not a readable image"),
        ([str(corrupt)], "not a readable image"),
        ([str(empty)], "mask is empty"),
        ([str(tiny1)], "at least"),
        ([str(PHOTO), "--mask", str(mask)], "same size"),
        ([str(tmp / "nowhere.png")], "not found"),
    ]


def test_bad_input_is_one_clear_line(tiny, tmp_path):
    for extra, message in _bad_inputs(tmp_path):
        r = cupid("reconstruct", *extra, "-o", str(tmp_path / "o"), "--model", str(tiny), "--device", "cpu")
        assert r.returncode == 2, (extra, r.stderr)
        assert message in r.stderr, (extra, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        assert "loading model" not in r.stdout, (extra, r.stdout)   # refused before the model loads


def test_missing_model_and_offline_download(tmp_path):
    r = cupid("reconstruct", str(PHOTO), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nomodel"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = cupid("download", "--cache-dir", str(tmp_path / "hf"))
    assert r.returncode == 2 and "could not download" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", [["reconstruct", "photo.png", "-o", "out"], ["serve"]])
def test_dtype_flag_beside_device(command):
    from cupid.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(command).dtype == "auto"
    for name in ("float32", "bfloat16", "float16"):
        assert parser.parse_args([*command, "--dtype", name, "--device", "cpu"]).dtype == name
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--dtype", "half"])


def test_a_wrong_dtype_is_one_clear_line(tmp_path):
    r = cupid("reconstruct", str(PHOTO), "-o", str(tmp_path / "o"), "--dtype", "half")
    assert r.returncode == 2 and "--dtype" in r.stderr and "invalid choice" in r.stderr
    assert "bfloat16" in r.stderr and "Traceback" not in r.stderr


def test_the_dtype_reaches_the_pipeline_and_is_announced(monkeypatch, capsys, tmp_path):
    from cupid.cli import main
    from cupid.errors import CliError
    from cupid.models import dtype as policy
    from cupid.pipeline import CupidPipeline

    asked = []

    def loaded(model, device="auto", dtype="auto"):
        asked.append((device, dtype))
        raise CliError("stop here")

    monkeypatch.setattr(CupidPipeline, "from_pretrained", loaded)
    monkeypatch.setattr(policy, "cpu_has_bf16", lambda: False)
    assert main(["reconstruct", str(PHOTO), "-o", str(tmp_path / "o"), "--device", "cpu", "--dtype", "bfloat16"]) == 2
    assert main(["reconstruct", str(PHOTO), "-o", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert asked == [("cpu", "bfloat16"), ("cpu", "float32")]
    err = capsys.readouterr().err
    assert "device cpu, bfloat16 (asked for; this CPU has no bf16 instructions: slower than float32)" in err
    assert "device cpu, float32 (auto: this CPU has no bf16 instructions)" in err
