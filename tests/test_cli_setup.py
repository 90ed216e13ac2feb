"""The CLI after an offline set-up, and its own checks (issue 24): the model the set-up recorded in the
environment, said on stderr; seeds refused as the service refuses them; an EXR photo; an output folder
that is refused when it holds something, replaced only with --overwrite, and left empty by Ctrl-C.

The set-up's environment is a real one (a venv whose `sys.prefix` holds the record, reusing this
interpreter's packages), driven as a real process, with Hugging Face unreachable."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")   # before OpenCV's first EXR (exr_photo)

from cupid.cli import main  # noqa: E402
from cupid.errors import CliError  # noqa: E402
from cupid.pipeline import CupidPipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "monkey.png"


@pytest.fixture(scope="module")
def set_up_env(tmp_path_factory, tiny_model) -> Path:
    """A fresh environment whose set-up recorded the tiny model, as install/setup.sh does offline."""
    env = tmp_path_factory.mktemp("setup") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=60)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    parents = [p for p in sys.path if p.endswith("site-packages")]
    (site / "parent_env.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    r = subprocess.run([str(python_of(env)), "-m", "cupid.setup_record", str(tiny_model), "tiny"], env=run_env(env),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and (env / "cupid-setup.json").is_file(), r.stderr
    return env


def python_of(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run_env(env: Path) -> dict:
    """No Hugging Face: an endpoint that refuses at once, no offline flag to hide a request, an empty cache."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**out, "PYTHONPATH": str(REPO / "backend"), "HF_ENDPOINT": "http://127.0.0.1:9",
            "HF_HOME": str(env / "hf-home")}


def exr_photo(path: Path) -> Path:
    """The monkey cut-out as a linear-light EXR with its alpha (what Blender renders or a camera raw makes)."""
    import cv2

    rgba = np.asarray(Image.open(PHOTO).convert("RGBA"), np.float32) / 255.0
    rgb = rgba[..., :3]
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    assert cv2.imwrite(str(path), np.dstack([linear[..., ::-1], rgba[..., 3]]).astype(np.float32))
    return path


def test_reconstruct_runs_the_recorded_model_on_an_exr(set_up_env, tiny_model, tmp_path):
    """After an offline set-up the README's command runs the tiny model it installed, says so, and asks
    Hugging Face nothing; a valid EXR is a photo."""
    out = tmp_path / "out" / "photo"
    t0 = time.monotonic()
    r = subprocess.run([str(python_of(set_up_env)), "-m", "cupid", "reconstruct", str(exr_photo(tmp_path / "m.exr")),
                        "-o", str(out), "--steps", "1", "--device", "cpu"],
                       env=run_env(set_up_env), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"model {tiny_model} (set up in {set_up_env / 'cupid-setup.json'}" in r.stderr, r.stderr
    assert (out / "scene.json").is_file() and (out / "preview.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["photo"]          # no staging folder left
    assert "Traceback" not in r.stderr and time.monotonic() - t0 < 200


def test_serve_says_the_recorded_model(set_up_env, tiny_model, tmp_path):
    proc = subprocess.Popen([str(python_of(set_up_env)), "-m", "cupid", "serve", "--port", "0", "--device", "cpu",
                             "--token-file", str(tmp_path / "server.json")], env=run_env(set_up_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith(f"model {tiny_model} (set up in "), line
        assert "listening on" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_ctrl_c_leaves_nothing(set_up_env, tmp_path):
    """A real SIGINT to a real process after stage 1 wrote preview.json: no folder is left behind, not
    even the parent folders -o made."""
    out = tmp_path / "new" / "deeper" / "photo"
    proc = subprocess.Popen([str(python_of(set_up_env)), "-m", "cupid", "reconstruct", str(PHOTO), "-o", str(out),
                             "--device", "cpu"], env=run_env(set_up_env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("stage 1 done"):
                preview = Path(line.rsplit(" in ", 1)[1].strip())
                assert preview.is_file()
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "cupid: interrupted" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


@pytest.fixture()
def no_model(monkeypatch):
    """from_pretrained stops the run: what a command does before loading the model is what is tested."""
    loaded = []

    def stop(model, **_):
        loaded.append(model)
        raise CliError("stop here")

    monkeypatch.setattr(CupidPipeline, "from_pretrained", stop)
    return loaded


@pytest.mark.parametrize("seed", ["-1", str(2 ** 63), str(2 ** 70)])
def test_a_seed_the_service_refuses_is_refused_before_any_work(seed, no_model, tmp_path, capsys):
    assert main(["reconstruct", str(PHOTO), "-o", str(tmp_path / "o"), "--seed", seed]) == 2
    assert "--seed must be from 0 to 2^63 - 1" in capsys.readouterr().err
    assert no_model == [] and not (tmp_path / "o").exists()
    assert main(["reconstruct", str(PHOTO), "-o", str(tmp_path / "o"), "--seed", str(2 ** 63 - 1)]) == 2
    assert no_model and "stop here" in capsys.readouterr().err                # the largest seed passes
    pytest.importorskip("ray")
    assert main(["batch", str(PHOTO), "-o", str(tmp_path / "b"), "--seed", seed]) == 2    # the same check
    assert "--seed must be from 0 to 2^63 - 1" in capsys.readouterr().err


def test_a_non_empty_output_needs_overwrite_and_a_bundle(no_model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["reconstruct", str(PHOTO), "-o", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err and no_model == []
    assert main(["reconstruct", str(PHOTO), "-o", str(out), "--overwrite"]) == 2
    assert "holds no CUPID bundle" in capsys.readouterr().err and no_model == []
    (out / "scene.json").write_text("{}")
    assert main(["reconstruct", str(PHOTO), "-o", str(out), "--overwrite"]) == 2
    assert "stop here" in capsys.readouterr().err and len(no_model) == 1
    assert main(["reconstruct", str(PHOTO), "-o", str(out / "scene.json")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_staging_replaces_a_bundle_only_once_the_new_one_is_complete(tmp_path):
    from cupid.commands.staging import staging

    out = tmp_path / "a" / "b"
    with pytest.raises(KeyboardInterrupt):
        with staging(out) as work:
            (work / "preview.json").write_text("{}")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []                                     # and the parents it made
    with staging(out) as work:
        (work / "scene.json").write_text("old")
        (work / "object_3.glb").write_text("old")
    with pytest.raises(RuntimeError):
        with staging(out) as work:
            (work / "scene.json").write_text("new")
            raise RuntimeError("export failed")
    assert (out / "scene.json").read_text() == "old"                          # the old bundle stays whole
    with staging(out) as work:
        (work / "scene.json").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["scene.json"] and (out / "scene.json").read_text() == "new"
    assert sorted(p.name for p in out.parent.iterdir()) == ["b"]


def test_scene_mode_says_how_many_objects_the_label_image_holds(no_model, tmp_path, capsys):
    """Grey labels 128 and 255 are two objects (issue 24), and the command says so before loading the model."""
    w, h = Image.open(PHOTO).size
    labels = np.zeros((h, w), np.uint8)
    labels[10:60, 10:60] = 128
    labels[70:120, 70:120] = 255
    Image.fromarray(labels).save(tmp_path / "labels.png")
    assert main(["reconstruct", str(PHOTO), "-o", str(tmp_path / "o"), "--mode", "scene",
                 "--mask", str(tmp_path / "labels.png")]) == 2
    assert "scene mode: 2 objects in the label image labels.png" in capsys.readouterr().out


def test_install_setup_sh_records_its_model_and_its_main_job_runs_it():
    """setup.sh writes the record with the backend's writer (as the fixture above does) once the model is in
    place, forgets it before changing the environment, and its main job runs the recorded model again."""
    script = (REPO / "install" / "setup.sh").read_text()
    forget, record = script.index('rm -f "$VENV/cupid-setup.json"'), script.index('-m cupid.setup_record "$MODEL"')
    weights, main_job = script.index('say "Weights"'), script.index("-m cupid reconstruct")
    assert forget < weights < record < main_job
    job = script[main_job:].splitlines()[0]
    assert "--model" not in job and "--overwrite" in job     # a second run replaces out/monkey
