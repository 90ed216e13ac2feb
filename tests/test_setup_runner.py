"""The set-up process without Blender: steps resume where a failed or cancelled run stopped, a working
backend is a no-op, the tiny model is replaced once the weights can be downloaded, failures become one
line (disk, network, Windows paths, pip's own error), pip's output becomes progress, and Blender's side
(SetupProcess) reads the JSON lines, cancels the whole process tree and reports a crash."""
from __future__ import annotations

import io
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cupid_blender.setup.plan import SetupRequest
from cupid_blender.setup.process import CANCELLED, SetupProcess
from cupid_blender.setup.output import PipProgress, explain_failure
from cupid_blender.setup.runner import TINY_MESSAGE, Reporter, Setup, StepFailed
from cupid_blender.setup.state import STEPS, SetupState, read_record
from cupid_blender.setup.system import Platform
from cupid_blender.setup.torch_build import choose_torch

REPO = Path(__file__).resolve().parents[1]
ADDON = REPO / "cupid_blender"


class StubSetup(Setup):
    """The real sequencing, state and record; steps that only record that they ran (or fail on demand)."""

    def __init__(self, req, out, fail=(), weights="official", **kw):
        super().__init__(req, Reporter(out, io.StringIO()), **kw)
        self.fail, self.weights, self.ran = set(fail), weights, []

    def _step(self, name, result):
        self.ran.append(name)
        if name in self.fail:
            raise StepFailed(f"{name} failed on purpose")
        return result

    def step_environment(self):
        os.makedirs(os.path.dirname(self.layout.python), exist_ok=True)
        Path(self.layout.python).write_text("")
        return self._step("environment", {"base": "test"})

    def step_torch(self):
        return self._step("torch", {})

    def step_cupid(self):
        return self._step("cupid", {"version": "0.1.0"})

    def step_weights(self):
        model = "hbb1/Cupid" if self.weights == "official" else self.layout.tiny_model
        return self._step("weights", {"model": model, "weights": self.weights})

    def step_check(self):
        return self._step("check", {"device": "cpu", "version": "0.1.0"})


@pytest.fixture()
def request_(tmp_path) -> SetupRequest:
    wheel = tmp_path / "cupid-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    return SetupRequest(str(tmp_path / "back end ü"), str(wheel), choose_torch("CPU", Platform.current(), None, {}))


def events(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_failed_step_resumes_there_and_the_record_comes_last(request_):
    first = StubSetup(request_, io.StringIO(), fail={"torch"})
    with pytest.raises(StepFailed):
        first.run_all()
    assert first.ran == ["environment", "torch"]
    assert read_record(first.layout) is None and SetupState(first.layout.state).completed() == ["environment"]
    out = io.StringIO()
    second = StubSetup(request_, out)
    rec = second.run_all()
    assert second.ran == ["torch", "cupid", "weights", "check"]          # the environment was kept
    assert rec["model"] == "hbb1/Cupid" and rec["changed"] and read_record(second.layout) == rec
    skipped = [e["step"] for e in events(out) if e["event"] == "step" and e["skipped"]]
    assert skipped == ["environment"]
    fractions = [e["fraction"] for e in events(out) if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_the_record_inside_the_environment_names_the_model_the_backend_runs(request_):
    """The backend's CLI reads the set-up's model from the environment (issue 24): the add-on's writer and
    the backend's reader agree on the file and its format; a set-up under way has none."""
    from cupid import setup_record

    assert os.path.basename(StubSetup(request_, io.StringIO()).layout.env_record) == setup_record.RECORD_NAME
    tiny = StubSetup(request_, io.StringIO(), weights="tiny")
    rec = tiny.run_all()
    env = tiny.layout.venv
    assert setup_record.recorded_model(env) == tiny.layout.tiny_model == rec["model"]
    assert setup_record.read_record(env) == rec == read_record(tiny.layout)
    assert setup_record.choose_model(None, env)[0] == tiny.layout.tiny_model
    assert setup_record.choose_model("other/model", env) == ("other/model", "--model")
    failing = StubSetup(request_, io.StringIO(), weights="official", fail={"weights"})
    with pytest.raises(StepFailed):
        failing.run_all()
    assert setup_record.recorded_model(env) is None                     # forgotten before anything changed
    online = StubSetup(request_, io.StringIO(), weights="official")
    online.run_all()
    assert setup_record.recorded_model(env) == "hbb1/Cupid"


def test_a_working_backend_is_a_no_op(request_):
    StubSetup(request_, io.StringIO()).run_all()
    again = StubSetup(request_, io.StringIO())
    t0 = time.monotonic()
    rec = again.run_all()
    assert again.ran == [] and rec["changed"] is False and time.monotonic() - t0 < 1


def test_a_new_pytorch_choice_reinstalls_from_there(request_):
    StubSetup(request_, io.StringIO()).run_all()
    request_.torch = choose_torch("AUTO", Platform("linux", "x86_64"), None, {"CUPID_TORCH": "torch==2.13.0"})
    again = StubSetup(request_, io.StringIO())
    again.run_all()
    assert again.ran == ["torch", "cupid", "weights", "check"]


def test_the_tiny_model_is_retried_and_replaced_once_online(request_):
    StubSetup(request_, io.StringIO(), weights="tiny").run_all()
    still_offline = StubSetup(request_, io.StringIO(), weights="tiny")
    rec = still_offline.run_all()
    assert rec["weights"] == "tiny" and rec["changed"] is False
    assert still_offline.ran == ["weights"]                             # same result: no new check
    online = StubSetup(request_, io.StringIO(), weights="official")
    rec = online.run_all()
    assert online.ran == ["weights", "check"] and rec["model"] == "hbb1/Cupid"


def test_a_deleted_environment_or_repair_starts_over(request_):
    first = StubSetup(request_, io.StringIO())
    first.run_all()
    os.remove(first.layout.python)
    again = StubSetup(request_, io.StringIO())
    again.run_all()
    assert again.ran[0] == "environment"
    request_.repair = True
    repair = StubSetup(request_, io.StringIO())
    repair.run_all()
    assert repair.ran == list(STEPS)


def test_a_cancel_mid_step_leaves_that_step_undone(request_):
    """A kill during a step: the step is not marked done, the record is gone (the state is written
    before and after each step only)."""
    StubSetup(request_, io.StringIO()).run_all()
    request_.torch = choose_torch("AUTO", Platform("linux", "x86_64"), None, {"CUPID_TORCH": "torch==2.14.1"})

    class Killed(StubSetup):
        def step_torch(self):
            raise KeyboardInterrupt   # stands in for the kill
    with pytest.raises(KeyboardInterrupt):
        Killed(request_, io.StringIO()).run_all()
    layout = StubSetup(request_, io.StringIO()).layout
    assert read_record(layout) is None and "torch" not in SetupState(layout.state).completed()


# ------------------------------------------------------------------ one line per failure

def test_failures_become_one_line():
    disk = explain_failure("Installing PyTorch", ["Collecting torch", "ERROR: Could not install packages due to an "
                                                  "OSError: [Errno 28] No space left on device"], "/b", 10 * 2 ** 20)
    assert "the disk holding /b is full (10 MB free)" in disk and "resumes here" in disk
    net = explain_failure("Installing PyTorch", ["WARNING: Retrying ... NewConnectionError('Failed to establish a new "
                                                 "connection: [Errno -3] Temporary failure in name resolution')"], "/b")
    assert "no connection to the package index" in net
    win = explain_failure("Installing PyTorch", ["HINT: This error might have occurred since this system does not have "
                                                 "Windows Long Path support enabled."], "C:\\b")
    assert "260-character limit" in win
    pip = explain_failure("Installing torch==9", ["Looking in indexes: x", "ERROR: Could not find a version that "
                                                  "satisfies the requirement torch==9", "ERROR: No matching "
                                                  "distribution found for torch==9"], "/b")
    assert pip.startswith("Installing torch==9 failed: No matching distribution found for torch==9")
    assert "\n" not in disk + net + win + pip


def test_pip_output_becomes_progress():
    seen = []
    prog = PipProgress(lambda f, m: seen.append((f, m)), "PyTorch")
    for line in ["Looking in indexes: https://download.pytorch.org/whl/cpu",
                 "Collecting torch==2.13.0", "  Downloading torch-2.13.0%2Bcpu-cp311-cp311-win_amd64.whl (191.8 MB)",
                 "Progress 52428800 of 201142272", "Installing collected packages: sympy, torch",
                 "Successfully installed sympy-1.14 torch-2.13.0+cpu"]:
        prog(line)
    messages = [m for _, m in seen]
    assert "PyTorch: downloading torch-2.13.0%2Bcpu-cp311-cp311-win_amd64.whl (191.8 MB)" in messages
    assert any("50 MB of 192 MB" in m for m in messages), messages
    assert "PyTorch: installing 2 package(s)" in messages and seen[-1] == (1.0, "PyTorch: installed")
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)


def test_the_offline_message_is_install_setup_sh_s():
    script = (REPO / "install" / "setup.sh").read_text()
    for line in TINY_MESSAGE:
        assert f'echo "{line}"' in script


# ------------------------------------------------------------------ Blender's side of the process

STUB_RUNNER = '''
import json, subprocess, sys, time
def emit(**e):
    sys.stdout.write(json.dumps(e) + "\\n"); sys.stdout.flush()
def main(argv):
    mode = open(argv[0]).read().strip()
    emit(event="step", step="torch", index=1, count=5, label="Installing PyTorch", skipped=False)
    emit(event="progress", step="torch", fraction=0.2, message="downloading torch")
    emit(event="info", message="PyTorch: CPU build")
    if mode == "crash":
        raise RuntimeError("a bug")
    if mode == "fail":
        emit(event="error", step="torch", message="Installing PyTorch failed: no space")
        return 1
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open(argv[1], "w").write(str(child.pid))
        time.sleep(300)
    emit(event="done", record={"python": "/x/python", "model": "m"})
    return 0
'''


@pytest.fixture()
def stub_addon(tmp_path) -> Path:
    addon = tmp_path / "addon ü"
    (addon / "setup").mkdir(parents=True)
    (addon / "__init__.py").write_text("")
    (addon / "setup" / "__init__.py").write_text("")
    (addon / "setup" / "runner.py").write_text(textwrap.dedent(STUB_RUNNER))
    return addon


def _run(stub_addon: Path, tmp_path: Path, mode: str) -> SetupProcess:
    req = tmp_path / "request.txt"
    req.write_text(mode)
    proc = SetupProcess(sys.executable, str(stub_addon), str(req), str(tmp_path / "setup.log"))
    proc.cmd.append(str(tmp_path / "child.pid"))
    return proc.start()


def _outcome(proc: SetupProcess, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, outcome = proc.poll()
        if outcome is not None:
            return status, outcome
        time.sleep(0.05)
    raise AssertionError("no outcome")


def test_process_reports_status_and_outcome(stub_addon, tmp_path):
    status, outcome = _outcome(_run(stub_addon, tmp_path, "done"))
    assert outcome.state == "done" and outcome.record == {"python": "/x/python", "model": "m"}
    assert (status.step, status.index, status.count, status.fraction) == ("torch", 1, 5, 0.2)
    assert status.notes == ["PyTorch: CPU build"]
    status, outcome = _outcome(_run(stub_addon, tmp_path, "fail"))
    assert outcome.state == "failed" and outcome.message == "Installing PyTorch failed: no space"


def test_a_crash_of_the_runner_is_reported_with_its_traceback_in_the_log(stub_addon, tmp_path):
    _, outcome = _outcome(_run(stub_addon, tmp_path, "crash"))
    assert outcome.state == "failed" and "ended unexpectedly (exit code 1)" in outcome.message
    assert "RuntimeError: a bug" in (tmp_path / "setup.log").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason=("checks through /proc/PID/stat (Linux only) that the child is gone or a zombie; "
                            "the Windows and macOS stop paths are tested faked in test_setup_platforms.py"))
def test_cancel_stops_the_runner_and_what_it_started(stub_addon, tmp_path):
    proc = _run(stub_addon, tmp_path, "hang")
    pidfile = tmp_path / "child.pid"
    deadline = time.monotonic() + 30
    while not (pidfile.is_file() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    proc.cancel()
    status, outcome = _outcome(proc)
    assert outcome.state == "cancelled" and outcome.message == CANCELLED
    time.sleep(0.2)
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_the_real_runner_boots_as_a_private_package(tmp_path):
    """The add-on's own runner, loaded from its folder under the name cupid_addon (never `cupid`)."""
    proc = SetupProcess(sys.executable, str(ADDON), str(tmp_path / "missing-request.json"),
                        str(tmp_path / "setup.log")).start()
    _, outcome = _outcome(proc)
    log = (tmp_path / "setup.log").read_text()
    assert outcome.state == "failed" and str(ADDON / "setup" / "runner.py") in log
    assert "FileNotFoundError" in log and "missing-request.json" in log


# ------------------------------------------------------------------ which Python makes the environment

def _environment_step(request_, monkeypatch, versions: dict, which: dict):
    import cupid_blender.setup.runner as runner

    monkeypatch.setattr(runner, "python_version", lambda cmd, plat=None: versions.get(cmd[-1]))
    setup = runner.Setup(request_, Reporter(io.StringIO(), io.StringIO()), plat=Platform("linux", "x86_64"),
                         which=which.get)
    made = []

    def fake_run(cmd, on_line=None, env=None):
        if list(cmd[-3:-1]) == ["-m", "venv"]:
            made.append(cmd[0])
            os.makedirs(os.path.dirname(setup.layout.python), exist_ok=True)
            Path(setup.layout.python).write_text("")
        return 0, []
    setup.run = fake_run
    setup.rep.step = "environment"
    return setup, made


def test_blenders_own_python_makes_the_environment_when_it_can(request_, monkeypatch):
    request_.pythons = [["/blender/4.2/python/bin/python3.11"]]
    setup, made = _environment_step(request_, monkeypatch, {"/blender/4.2/python/bin/python3.11": (3, 11),
                                                            "/usr/bin/python3": (3, 12)}, {"python3": "/usr/bin/python3"})
    assert setup.step_environment() == {"base": "Blender's own Python 3.11 (/blender/4.2/python/bin/python3.11)"}
    assert made == ["/blender/4.2/python/bin/python3.11"]


def test_blender_5_1s_python_3_13_hands_over_to_a_system_python(request_, monkeypatch):
    request_.pythons = [["/blender/5.1/python/bin/python3.13"]]
    setup, made = _environment_step(request_, monkeypatch, {"/blender/5.1/python/bin/python3.13": (3, 13),
                                                            "/usr/bin/python3": (3, 12)}, {"python3": "/usr/bin/python3"})
    assert setup.step_environment() == {"base": "a system Python 3.12 (/usr/bin/python3)"}
    assert made == ["/usr/bin/python3"]
    nothing, _ = _environment_step(request_, monkeypatch, {"/blender/5.1/python/bin/python3.13": (3, 13)}, {})
    with pytest.raises(StepFailed, match=r"3\.13 is too new for numpy 1\.x.*Install Python 3\.12 from python\.org"):
        nothing.step_environment()
