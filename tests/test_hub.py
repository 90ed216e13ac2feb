"""cupid.hub: the one cache (CUPID_WEIGHTS_DIR or huggingface_hub's), offline use, one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from cupid import hub
from cupid.errors import CheckpointError


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)


def _seed_cache(cache: Path, repo: str, files: dict[str, str], commit: str = "a" * 40) -> None:
    """Lay files out the way huggingface_hub's cache does (refs/main -> snapshots/COMMIT/...)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name, text in files.items():
        path = root / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)
    assert hub.cache_dir() is None
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path))
    assert hub.cache_dir() == str(tmp_path)


def test_offline_file_from_the_weights_cache(monkeypatch, tmp_path):
    _offline(monkeypatch)
    _seed_cache(tmp_path, "owner/model", {"pipeline.json": '{"args": {}}', "ckpts/a.json": "{}"})
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path))
    got = hub.hub_file("owner/model", "ckpts/a.json")
    assert got.read_text() == "{}" and str(got).startswith(str(tmp_path))
    snap = hub.hub_snapshot("owner/model", ["pipeline.json"])
    assert (snap / "pipeline.json").is_file()


def test_missing_file_offline_is_one_clear_line(monkeypatch, tmp_path):
    _offline(monkeypatch)
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(CheckpointError) as info:
        hub.hub_file("owner/absent", "model.pt", what="the test model")
    msg = info.value.message
    assert "the test model" in msg and "offline" in msg and "cupid download" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="could not download owner/absent.*cupid download"):
        hub.hub_snapshot("owner/absent", ["*.json"])


def test_the_offline_message_is_one_plain_sentence_with_what_to_do(monkeypatch, tmp_path):
    """No reason nested in brackets inside brackets, no 'it' without a referent, no network advice
    while offline mode is what stops it."""
    _offline(monkeypatch)
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(CheckpointError) as info:
        hub.hub_file("owner/absent", "model.pt", what="the test model")
    assert info.value.message == ("cannot get the test model from Hugging Face: offline mode is on (HF_HUB_OFFLINE) "
                                  "and the file is not in the local cache. Run 'cupid download' while online, or "
                                  "pass a local model folder")
    with pytest.raises(CheckpointError) as info:
        hub.hub_snapshot("owner/absent", ["*.json"])
    msg = info.value.message
    assert msg.startswith("could not download owner/absent from Hugging Face: offline mode is on (HF_HUB_OFFLINE) "
                          "and its files are not in the local cache. To fix it, unset HF_HUB_OFFLINE and run "
                          "'cupid download' again")
    assert "network" not in msg and "((" not in msg and "))" not in msg


def test_a_long_hub_error_gives_its_first_sentence_whole(monkeypatch):
    monkeypatch.setattr(hub, "is_offline", lambda: False)
    exc = OSError("An error happened while trying to locate the file on the Hub and we cannot find the requested "
                  "files in the local cache. Please check your connection and try again or make sure your "
                  "Internet connection is on.")
    assert hub._why(exc) == ("OSError: An error happened while trying to locate the file on the Hub and we cannot "
                             "find the requested files in the local cache")
