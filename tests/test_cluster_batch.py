"""`cupid batch` on Ray Data with the tiny model: listings, unique names, a corrupt photo that fails
alone, resuming that redoes nothing, and a batch killed midway that the next run finishes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cupid.cluster.catalogue import list_inputs
from cupid.cluster.ledger import LEDGER, Ledger, read_scene
from cupid.errors import CliError

REPO = Path(__file__).resolve().parents[1]
MONKEY = REPO / "examples" / "monkey.png"


def _photos(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(MONKEY.read_bytes())
    return folder


def test_listings_folders_and_unique_names(tmp_path):
    a = _photos(tmp_path / "a", ["cup.png", "vase.jpg"])
    b = _photos(tmp_path / "b", ["cup.png"])
    (a / "notes.txt").write_text("not a photo")
    (tmp_path / "list.csv").write_text("photo,mask,seed,prompts\n"
                                       "b/cup.png,,7,\n"
                                       "a/vase.jpg,a/cup.png,,\n"
                                       "a/cup.png,,seven,\n"
                                       ",,1,\n"
                                       'a/cup.png,,,"{""points"": [[1, 2]]}"\n')
    (tmp_path / "list.jsonl").write_text(json.dumps({"photo": "a/cup.png", "mode": "scene",
                                                     "prompts": {"boxes": [[0, 0, 5, 5]]}}) + "\n{broken\n")
    items = list_inputs([str(a), str(b / "cup.png"), str(tmp_path / "list.csv"), str(tmp_path / "list.jsonl")])
    assert [Path(i.photo).relative_to(tmp_path).as_posix() for i in items[:3]] == ["a/cup.png", "a/vase.jpg",
                                                                                    "b/cup.png"]
    csv_rows = items[3:8]
    assert csv_rows[0].seed == 7 and csv_rows[0].problem is None
    assert csv_rows[1].mask == str((a / "cup.png").resolve())         # relative to the listing
    assert "seed 'seven'" in csv_rows[2].problem
    assert "names no photo" in csv_rows[3].problem
    assert json.loads(csv_rows[4].prompts) == {"points": [[1, 2]]}
    jl = items[8:]
    assert jl[0].mode == "scene" and json.loads(jl[0].prompts) == {"boxes": [[0, 0, 5, 5]]}
    assert "not JSON" in jl[1].problem
    names = Ledger(tmp_path / "out").names(i.photo for i in items)
    assert names[str((a / "cup.png").resolve())] == "cup" and names[str((b / "cup.png").resolve())] == "cup-2"
    assert len(set(n.lower() for n in names.values())) == len(names)
    with pytest.raises(CliError, match="photo not found"):
        list_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(CliError, match="'photo' column"):
        (tmp_path / "bad.csv").write_text("image\nx.png\n")
        list_inputs([str(tmp_path / "bad.csv")])


def test_workers_take_one_gpu_each_where_the_cluster_has_gpus():
    from cupid.cluster.runtime import place_workers

    gpu, n = place_workers("auto", 4, {"CPU": 32, "GPU": 2}, [16, 16])
    assert (gpu.device, gpu.num_gpus, n) == ("cuda", 1.0, 2)           # cut to the GPUs there are
    cpu, n = place_workers("auto", 2, {"CPU": 2}, [2])
    assert (cpu.device, cpu.num_gpus, cpu.num_cpus, n) == ("cpu", 0.0, 1.0, 2)
    one, n = place_workers("cpu", 1, {"CPU": 24, "GPU": 1}, [8, 16])
    assert (one.device, one.num_cpus, n) == ("cpu", 16.0, 1)           # at most one machine's cores
    with pytest.raises(CliError, match="no GPU"):
        place_workers("cuda", 1, {"CPU": 4}, [4])


ray = pytest.importorskip("ray", reason="the backend's cluster extra (Ray) is not installed")


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _run(inputs: list[Path], out: Path, model: Path, **kw):
    from cupid.cluster.batch import ModelSpec, run_batch
    from cupid.cluster.worker import BatchOptions

    options = BatchOptions(out=str(out), steps=kw.pop("steps", 2), min_fit=kw.pop("min_fit", None))
    records: list[dict] = []
    summary = run_batch(list_inputs([str(p) for p in inputs]), options, ModelSpec(str(model), "float32"),
                        workers=kw.pop("workers", 2), address=None, device="cpu",
                        report=lambda rec, _: records.append(rec), announce=lambda _: None)
    return summary, {Path(r["photo"]).relative_to(inputs[0].parent).as_posix(): r for r in records}


def _mtimes(out: Path) -> dict[str, int]:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
            and p.name != LEDGER and not p.name.startswith(".")}


def test_a_corrupt_photo_fails_alone_and_a_second_run_redoes_nothing(ray_runtime, tiny_model, tmp_path):
    a = _photos(tmp_path / "a", ["cup.png", "vase.png"])
    b = _photos(tmp_path / "b", ["cup.png"])
    (a / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "list.csv").write_text("photo,seed\nb/cup.png,5\n")
    out = tmp_path / "out"
    summary, recs = _run([a, tmp_path / "list.csv"], out, tiny_model, min_fit=0.99)
    assert (summary.ok, summary.failed, summary.skipped) == (3, 1, 0), recs
    assert recs["a/broken.png"]["status"] == "failed" and recs["a/broken.png"]["code"] == "bad_input"
    assert recs["b/cup.png"]["seed"] == 5 and recs["b/cup.png"]["bundle"] == "cup-2"
    for key in ("a/cup.png", "a/vase.png", "b/cup.png"):
        rec = recs[key]
        assert rec["status"] == "ok" and read_scene(out / rec["bundle"]) is not None
        assert len(rec["fit"]) == 1 and 0 < rec["fit"][0] < 0.99 and rec["flagged"] is True and rec["seconds"] > 0
    lines = [json.loads(x) for x in (out / LEDGER).read_text().splitlines()]
    assert len(lines) == 4 and {x["status"] for x in lines} == {"ok", "failed"}
    assert not list(out.glob(".partial-*"))
    before = _mtimes(out)

    summary, recs = _run([a, tmp_path / "list.csv"], out, tiny_model, min_fit=0.99)
    assert (summary.ok, summary.skipped, summary.failed) == (0, 3, 1)
    assert recs["a/broken.png"]["retried"] is False and recs["a/broken.png"]["code"] == "bad_input"
    assert _mtimes(out) == before                       # no bundle redone, no file touched
    assert len((out / LEDGER).read_text().splitlines()) == 4

    (a / "broken.png").write_bytes(MONKEY.read_bytes())  # fixed: it runs again, the rest stays
    summary, recs = _run([a, tmp_path / "list.csv"], out, tiny_model)
    assert (summary.ok, summary.skipped, summary.failed) == (1, 3, 0)
    assert {k: v for k, v in _mtimes(out).items() if not k.startswith("broken/")} == before


def test_a_batch_killed_midway_finishes_only_what_was_missing(ray_runtime, tiny_model, tmp_path):
    photos = _photos(tmp_path / "in", [f"p{k}.png" for k in range(6)])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "backend"), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cupid", "batch", str(photos), "-o", str(out), "--ray",
                             ray_runtime, "--workers", "1", "--steps", "25", "--model", str(tiny_model), "--device",
                             "cpu", "--dtype", "float32"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    ledger = out / LEDGER
    while not (ledger.is_file() and ledger.read_text().count('"status": "ok"') >= 2):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    done_before = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert 2 <= len(done_before) < 6
    before = _mtimes(out)

    summary, recs = _run([photos], out, tiny_model, steps=25, workers=2)
    assert summary.skipped == len(done_before) and summary.ok == 6 - len(done_before) and summary.failed == 0
    assert {k: v for k, v in _mtimes(out).items() if k.split("/")[0] in done_before} == before
    assert not list(out.glob(".partial-*"))             # what the kill left half written is gone
    lines = [json.loads(x) for x in ledger.read_text().splitlines()]
    assert sorted(Path(x["photo"]).name for x in lines) == [f"p{k}.png" for k in range(6)]
    assert all(read_scene(out / f"p{k}") is not None for k in range(6))

