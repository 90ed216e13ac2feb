"""Windows, macOS and Linux as the add-on meets them, with the platform faked where this Linux machine
cannot be the other one: venv paths, console-less processes, stopping without POSIX signals, stopping
a whole process tree, owner-only folders (icacls), Windows' 260-character paths, which Python makes
the environment, and which PyTorch build (nvidia-smi's CUDA version, Apple silicon, the CPU index)."""
from __future__ import annotations

import ntpath
import os
import stat
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from cupid_blender.setup import system, torch_build
from cupid_blender.setup.plan import (LONGEST_INSIDE_VENV, SetupRequest, by_disk, check_space, long_path_problem,
                                      refuse_location, space_needed)
from cupid_blender.setup.state import BackendLayout
from cupid_blender.setup.system import Platform
from cupid_blender.setup.torch_build import Nvidia, TorchChoiceError, choose_torch

WIN = Platform("win32", "AMD64")
MAC_ARM = Platform("darwin", "arm64")
MAC_INTEL = Platform("darwin", "x86_64")
LINUX = Platform("linux", "x86_64")
WIN_USER = r"C:\Users\Jürgen Müller-Lüdenscheidt\AppData\Roaming\Blender Foundation\Blender\4.2\extensions\.user" \
           r"\user_default\cupid\backend"

NVIDIA_SMI = """Tue Jun  3 10:12:01 2025
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 575.51.03              Driver Version: 575.51.03      CUDA Version: 12.9     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA GeForce RTX 4090        Off |   00000000:01:00.0  On |                  Off |
+-----------------------------------------+------------------------+----------------------+
"""


class Recorder:
    """Stands in for subprocess.run: records each command, answers from a table of (first word -> result)."""

    def __init__(self, answers: dict) -> None:
        self.answers, self.calls = answers, []

    def __call__(self, cmd, **kwargs):
        self.calls.append((list(cmd), kwargs))
        answer = self.answers.get(ntpath.basename(cmd[0]))   # either separator
        if isinstance(answer, BaseException):
            raise answer
        return answer or SimpleNamespace(returncode=0, stdout="", stderr="")


# ------------------------------------------------------------------ paths and processes

def test_venv_python_per_platform():
    assert system.venv_python(r"C:\Users\Jürgen\b\env", WIN) == r"C:\Users\Jürgen\b\env\Scripts\python.exe"
    assert system.venv_python("/Users/jürgen/b/env", MAC_ARM) == "/Users/jürgen/b/env/bin/python"
    assert BackendLayout(WIN_USER, WIN).python == WIN_USER + r"\env\Scripts\python.exe"
    assert BackendLayout("/home/a b/backend", LINUX).record == "/home/a b/backend/setup.json"


def test_background_processes_have_no_console_on_windows_and_their_own_group():
    assert system.hidden_process_options(WIN) == {"creationflags": 0x08000000}
    assert system.hidden_process_options(WIN, own_group=True) == {"creationflags": 0x08000000 | 0x00000200}
    assert system.hidden_process_options(LINUX) == {}
    assert system.hidden_process_options(MAC_ARM, own_group=True) == {"start_new_session": True}
    if sys.platform == "win32":
        assert system.CREATE_NO_WINDOW == subprocess.CREATE_NO_WINDOW


class FakeProc:
    def __init__(self, lingers: bool = False) -> None:
        self.pid, self.calls, self.code, self.lingers = 4242, [], None, lingers

    def poll(self):
        return self.code

    def terminate(self):
        self.calls.append("terminate")
        if not self.lingers:
            self.code = 1

    def kill(self):
        self.calls.append("kill")
        self.code = -9

    def send_signal(self, sig):  # pragma: no cover - must not be used on Windows
        self.calls.append(f"signal {sig}")

    def wait(self, timeout=None):
        if self.code is None:
            raise subprocess.TimeoutExpired("x", timeout)
        return self.code


def test_stopping_the_backend_on_windows_uses_no_posix_signal(monkeypatch):
    monkeypatch.setattr(os, "kill", lambda *a: pytest.fail("os.kill on Windows"))
    proc = FakeProc()
    system.stop_process(proc, WIN)
    assert proc.calls == ["terminate"]          # Popen.terminate is TerminateProcess there
    lingering = FakeProc(lingers=True)
    system.stop_process(lingering, WIN, timeout=0.01)
    assert lingering.calls == ["terminate", "kill"]


def test_kill_tree_on_windows_is_taskkill_of_the_tree():
    run, proc = Recorder({}), FakeProc()
    proc.code = None

    def run_and_end(cmd, **kw):
        proc.code = 1
        return run(cmd, **kw)
    system.kill_tree(proc, WIN, run=run_and_end, killpg=lambda *a: pytest.fail("killpg on Windows"))
    assert run.calls[0][0] == ["taskkill", "/F", "/T", "/PID", "4242"]
    assert run.calls[0][1]["creationflags"] == system.CREATE_NO_WINDOW


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a real process group, read in /proc")
def test_kill_tree_on_posix_stops_the_children_too(tmp_path):
    pidfile = tmp_path / "child.pid"
    proc = subprocess.Popen(["sh", "-c", f"sleep 300 & echo $! > '{pidfile}'; wait"],
                            **system.hidden_process_options(LINUX, own_group=True))
    deadline = time.monotonic() + 10
    while not (pidfile.is_file() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert _alive(child)
    system.kill_tree(proc, LINUX)
    assert proc.poll() is not None
    time.sleep(0.2)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running (a killed orphan may linger as a zombie until its new parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_child_environment_drops_blenders_python_settings():
    env = system.child_environment({"PYTHONHOME": "/blender/python", "PYTHONPATH": "/x", "VIRTUAL_ENV": "/v",
                                    "PATH": "/bin", "HOME": "/home/ü"})
    assert "PYTHONHOME" not in env and "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    assert env["PATH"] == "/bin" and env["HOME"] == "/home/ü" and env["PYTHONUTF8"] == "1"


# ------------------------------------------------------------------ owner-only folders

def test_owner_only_on_windows_grants_this_user_alone_by_sid(tmp_path):
    run = Recorder({"whoami": SimpleNamespace(returncode=0, stdout='"pc\\jürgen","S-1-5-21-1-2-3-1001"\r\n'),
                    "icacls": SimpleNamespace(returncode=0, stdout="processed 1 files", stderr="")})
    system.make_owner_only(str(tmp_path), WIN, run=run, environ={})
    cmd = run.calls[-1][0]
    assert cmd == ["icacls", str(tmp_path), "/inheritance:r", "/grant:r", "*S-1-5-21-1-2-3-1001:(OI)(CI)F"]
    assert all(kw.get("creationflags") == system.CREATE_NO_WINDOW for _, kw in run.calls)


def test_owner_only_on_windows_falls_back_to_the_user_name_and_reports_failure(tmp_path):
    run = Recorder({"whoami": OSError("no whoami"),
                    "icacls": SimpleNamespace(returncode=0, stdout="", stderr="")})
    system.make_owner_only(str(tmp_path), WIN, run=run, environ={"USERDOMAIN": "PC", "USERNAME": "Jürgen Ü"})
    assert run.calls[-1][0][-1] == "PC\\Jürgen Ü:(OI)(CI)F"
    failing = Recorder({"whoami": OSError(), "icacls": SimpleNamespace(returncode=5, stdout="Access is denied.",
                                                                       stderr="")})
    with pytest.raises(OSError, match="Access is denied"):
        system.make_owner_only(str(tmp_path), WIN, run=failing, environ={"USERNAME": "x"})


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_owner_only_on_posix_is_mode_0700(tmp_path):
    d = tmp_path / "token dir"
    d.mkdir(mode=0o755)
    system.make_owner_only(str(d), LINUX)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_the_backend_manager_on_windows(monkeypatch, tmp_path):
    """No console window, a private token folder (icacls), without POSIX calls; the interpreter
    path may hold spaces and non-ASCII letters."""
    from cupid_blender import backend_manager as bm

    python = tmp_path / "Jürgen Müller" / "env" / "Scripts" / "python.exe"
    python.parent.mkdir(parents=True)
    python.write_text("")
    python.chmod(0o755)
    private, started = [], {}
    monkeypatch.setattr(bm, "make_owner_only", lambda path, plat: private.append((path, plat)))

    def popen(cmd, **kwargs):
        started.update(cmd=cmd, **kwargs)
        raise OSError("stop here")
    monkeypatch.setattr(bm.subprocess, "Popen", popen)
    manager = bm.BackendManager(platform=WIN)
    with pytest.raises(bm.BackendStartError, match="cannot start the CUPID backend"):
        manager.client(bm.BackendConfig(python=str(python), model="m"))
    assert started["cmd"][:4] == [str(python), "-m", "cupid", "serve"]
    assert started["creationflags"] == system.CREATE_NO_WINDOW
    assert private and private[0][1] == WIN and os.path.basename(private[0][0]).startswith("cupid-backend-")


# ------------------------------------------------------------------ Windows' path limit

def test_long_paths_off_with_a_deep_user_folder_is_refused_with_the_figures():
    layout = BackendLayout(WIN_USER, WIN)
    message = long_path_problem(layout, long_paths=False)
    deepest = len(layout.venv) + 1 + LONGEST_INSIDE_VENV
    assert deepest > 260 and message and f"up to {deepest}" in message and "LongPathsEnabled" in message
    assert long_path_problem(layout, long_paths=True) is None
    assert long_path_problem(BackendLayout(r"C:\cupid", WIN), long_paths=False) is None
    assert long_path_problem(BackendLayout("/" + "x" * 300, LINUX), long_paths=False) is None


def test_long_paths_setting_is_read_from_the_registry_on_windows_only():
    assert system.long_paths_enabled(WIN, registry=lambda: 1) is True
    assert system.long_paths_enabled(WIN, registry=lambda: 0) is False

    def missing() -> int:
        raise OSError("no such value")
    assert system.long_paths_enabled(WIN, registry=missing) is False
    assert system.long_paths_enabled(LINUX) is True


def test_a_backend_folder_inside_blender_or_a_checkout_is_refused():
    forbidden = [(r"C:\Program Files\Blender Foundation\Blender 4.2", "Blender's installation")]
    assert "inside Blender's installation" in refuse_location(
        r"C:\Program Files\Blender Foundation\Blender 4.2\backend", forbidden, WIN)
    assert refuse_location(r"C:\cupid", forbidden, WIN) is None
    assert "a source checkout" in refuse_location("/src/cupid/env", [("/src/cupid", "a source checkout")], LINUX)
    assert refuse_location("/src/cupid-env", [("/src/cupid", "a source checkout")], LINUX) is None


# ------------------------------------------------------------------ which Python

def test_system_pythons_on_windows_use_the_py_launcher_and_skip_the_store_stub():
    which = {"py": r"C:\Windows\py.exe", "python": r"C:\Users\a\AppData\Local\Microsoft\WindowsApps\python.exe"}.get
    cands = system.system_python_candidates(WIN, which)
    assert cands[0] == [r"C:\Windows\py.exe", "-3.12"] and [r"C:\Windows\py.exe", "-3.10"] in cands
    assert all("WindowsApps" not in c[0] for c in cands)
    assert system.system_python_candidates(LINUX, {"python3": "/usr/bin/python3"}.get) == [["/usr/bin/python3"]]


def test_python_version_is_asked_of_the_interpreter():
    ok = Recorder({"py.exe": SimpleNamespace(returncode=0, stdout="3.12\n", stderr="")})
    assert system.python_version([r"C:\Windows\py.exe", "-3.12"], run=ok, plat=WIN) == (3, 12)
    assert ok.calls[0][1]["creationflags"] == system.CREATE_NO_WINDOW
    broken = Recorder({"python3": SimpleNamespace(returncode=1, stdout="", stderr="No module named venv")})
    assert system.python_version(["python3"], run=broken, plat=LINUX) is None
    assert system.python_version([sys.executable]) == sys.version_info[:2]


# ------------------------------------------------------------------ which PyTorch

def test_nvidia_smi_banner_gives_the_drivers_cuda_version():
    assert torch_build.parse_nvidia_smi(NVIDIA_SMI) == (12, 9)
    assert torch_build.parse_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate with the driver") is None


def test_detect_nvidia_with_nvidia_smi_faked():
    answers = {"nvidia-smi": SimpleNamespace(returncode=0, stdout=NVIDIA_SMI, stderr="")}

    class Run(Recorder):
        def __call__(self, cmd, **kw):
            self.calls.append((list(cmd), kw))
            if len(cmd) > 1:
                return SimpleNamespace(returncode=0, stdout="NVIDIA GeForce RTX 4090\n", stderr="")
            return answers["nvidia-smi"]
    run = Run({})
    found = torch_build.detect_nvidia(WIN, {"nvidia-smi": r"C:\Windows\System32\nvidia-smi.exe"}.get, run)
    assert found == Nvidia((12, 9), "NVIDIA GeForce RTX 4090")
    assert run.calls[0][1]["creationflags"] == system.CREATE_NO_WINDOW
    assert torch_build.detect_nvidia(LINUX, lambda name: None) is None
    failing = Recorder({"nvidia-smi": SimpleNamespace(returncode=9, stdout="NVIDIA-SMI has failed", stderr="")})
    assert torch_build.detect_nvidia(LINUX, {"nvidia-smi": "/usr/bin/nvidia-smi"}.get, failing) is None
    assert torch_build.detect_nvidia(MAC_ARM, lambda n: pytest.fail("no nvidia-smi on a Mac")) is None


@pytest.mark.parametrize("plat", [LINUX, WIN], ids=["linux", "windows"])
@pytest.mark.parametrize("driver,tag", [((12, 9), "cu128"), ((13, 1), "cu130"), ((12, 6), "cu126"), ((12, 7), "cu126")])
def test_auto_picks_the_newest_cuda_build_the_driver_runs(plat, driver, tag):
    build = choose_torch("AUTO", plat, Nvidia(driver, "RTX"), {})
    assert build.kind == "cuda" and build.index_url == f"https://download.pytorch.org/whl/{tag}"
    assert build.pip_args() == ["torch==2.13.0", "--index-url", f"https://download.pytorch.org/whl/{tag}"]
    assert f"runs CUDA {driver[0]}.{driver[1]}" in build.reason


def test_an_old_driver_falls_back_to_the_cpu_build_or_refuses_cuda():
    build = choose_torch("AUTO", LINUX, Nvidia((12, 2), "GTX 1080"), {})
    assert build.kind == "cpu" and build.index_url.endswith("/whl/cpu") and "update the NVIDIA driver" in build.reason
    with pytest.raises(TorchChoiceError, match="update the NVIDIA driver, or choose CPU"):
        choose_torch("CUDA", LINUX, Nvidia((11, 8), "GTX 1080"), {})


def test_no_gpu_gets_the_cpu_index_and_cuda_without_a_driver_is_refused():
    build = choose_torch("AUTO", WIN, None, {})
    assert build.kind == "cpu" and build.index_url == "https://download.pytorch.org/whl/cpu"
    assert choose_torch("CPU", LINUX, Nvidia((12, 9)), {}).kind == "cpu"     # asked for: no CUDA libraries
    with pytest.raises(TorchChoiceError, match="no NVIDIA driver"):
        choose_torch("CUDA", LINUX, None, {})


def test_apple_silicon_gets_the_standard_wheel_and_intel_macs_a_clear_no():
    build = choose_torch("AUTO", MAC_ARM, None, {})
    assert build.kind == "mps" and build.index_url is None and build.pip_args() == ["torch==2.13.0"]
    with pytest.raises(TorchChoiceError, match="Intel Macs"):
        choose_torch("AUTO", MAC_INTEL, None, {})
    with pytest.raises(TorchChoiceError, match="Macs do not have"):
        choose_torch("CUDA", MAC_ARM, None, {})


def test_cupid_torch_overrides_spec_and_index():
    build = choose_torch("CUDA", LINUX, None, {"CUPID_TORCH": "torch==2.13.0"})
    assert build.kind == "custom" and build.pip_args() == ["torch==2.13.0"]          # pip's own configuration
    build = choose_torch("AUTO", WIN, None, {"CUPID_TORCH": "torch>=2.4", "CUPID_TORCH_INDEX": "https://mirror/x"})
    assert build.pip_args() == ["torch>=2.4", "--index-url", "https://mirror/x"]


# ------------------------------------------------------------------ disk space and the request

def test_space_needed_counts_only_what_is_still_to_come():
    full = space_needed("cuda", [], weights_present=False)
    assert [w for w, _ in full] == ["PyTorch (CUDA build)", "room for pip's downloads", "CUPID's libraries",
                                    "the weights"]
    assert sum(gb for _, gb in full) == pytest.approx(6.5 + 3.5 + 1.0 + 5.0)
    assert [w for w, _ in space_needed("cpu", ["environment", "torch"], weights_present=True)] == ["CUPID's libraries"]
    assert space_needed("cpu", ["environment", "torch", "cupid", "weights"], weights_present=False) == []


def test_check_space_states_the_figures():
    items = space_needed("cpu", [], weights_present=False)
    message = check_space(items, 3 * 1024 ** 3, "/home/jürgen")
    assert message.startswith("Not enough disk space for the CUPID backend: it needs about 7.3 GB on /home/jürgen")
    assert "PyTorch (CPU build) 0.8 GB" in message and "3.0 GB are free" in message and "Free 4.3 GB" in message
    assert check_space(items, 8 * 1024 ** 3, "/") is None


def test_the_weights_are_counted_on_the_disk_of_the_weights_cache(tmp_path):
    items = space_needed("cpu", [], weights_present=False)
    assert by_disk(items, str(tmp_path), str(tmp_path)) == [(str(tmp_path), items)]     # one disk: the sum
    if os.path.isdir("/proc") and os.stat("/proc").st_dev != os.stat(tmp_path).st_dev:   # another file system
        split = by_disk(items, str(tmp_path), "/proc")
        assert split == [(str(tmp_path), items[:-1]), ("/proc", items[-1:])] and items[-1][0] == "the weights"


def test_request_round_trips_through_json():
    req = SetupRequest("C:\\Users\\Jürgen\\b", "C:\\x\\cupid.whl", choose_torch("AUTO", WIN, None, {}),
                       [["C:\\Program Files\\Blender\\python.exe"]], weights_dir="D:\\w", repair=True)
    assert SetupRequest.from_json(req.to_json()) == req
