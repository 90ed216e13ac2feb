"""What the README and the package metadata claim, checked against the code (issue 24, points 8 and 9)."""
from __future__ import annotations

import json
import os
import re
import tomllib
import warnings
from pathlib import Path

import pytest

from cupid import config, errors

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
PYPROJECT = REPO / "backend" / "pyproject.toml"


def _error_table() -> str:
    section = README.split("### When something goes wrong", 1)[1].split("\n#", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def test_every_error_code_the_backend_answers_has_a_row():
    """The add-on shows `CUPID backend error (CODE): ...` for each code of cupid.errors a job can end with."""
    codes = {cls.code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.CupidError)}
    answered = codes - {"cupid_error", "usage", "cancelled"}   # the base, the CLI's own, a cancel (its own row)
    assert {"bad_input", "bad_checkpoint"} <= answered
    table = _error_table()
    missing = sorted(c for c in answered if f"CUPID backend error ({c})" not in table)
    assert not missing, f"README's error table has no row for {missing}"


def test_the_licence_is_an_spdx_string_setuptools_takes_without_a_warning(monkeypatch):
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert data["project"]["license"] == "MIT"
    needed = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert needed == ["setuptools>=77"]
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_extension", REPO / "install" / "build_extension.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.SETUPTOOLS_NEEDED == (77,)              # the zip's wheel build asks for no older one
    monkeypatch.chdir(PYPROJECT.parent)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), str(PYPROJECT))
    assert not [w for w in caught if "license" in str(w.message).lower()], [str(w.message) for w in caught]
    assert dist.metadata.license_expression == "MIT"


def test_the_fixtures_are_where_the_readme_says():
    from conftest import FIXTURES

    assert "../shared" not in README
    assert "fixtures from `tests/fixtures`" in README
    if not os.environ.get("CUPID_SHARED"):
        assert FIXTURES == REPO / "tests" / "fixtures" and FIXTURES.is_dir()


def test_the_steps_default_the_readme_gives(tiny_model):
    """'0 is the model's default': 25 with the official weights, 4 with the tiny model (its pipeline.json)."""
    row = next(line for line in README.splitlines() if line.startswith("| **Steps** |"))
    official = config.SPARSE_STRUCTURE_SAMPLER["steps"]
    tiny = json.loads((tiny_model / "pipeline.json").read_text())["args"]["sparse_structure_sampler"]["params"]["steps"]
    assert re.search(rf"\b{official} with the official weights", row), row
    assert re.search(rf"\b{tiny} with the tiny test model", row), row


@pytest.mark.parametrize("claim", ["which Blender turns into a `RuntimeError` in a script",
                                   "returns `{'CANCELLED'}` without raising"])
def test_the_scripting_section_says_what_a_failed_operator_does(claim):
    """tests/test_blender_e2e.py checks the behaviour itself in Blender; here, that the README says it."""
    assert claim in " ".join(README.split())
