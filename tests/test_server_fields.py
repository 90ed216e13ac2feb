"""Every malformed form field is a 422 naming the field, never a 500, and no error message quotes
more than a few hundred characters of what was sent (the app in-process, no model)."""
from __future__ import annotations

import json

import pytest

from test_server import PHOTO, SteppedPipeline

TOKEN = "t" * 32
DEEP = "[" * 100_000 + "]" * 100_000   # past the size cap
NESTED = "[" * 30_000 + "]" * 30_000    # under it, past the depth cap (and Python's recursion limit)
HUGE = "a" * 1_000_000
EYE = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
CAMERA = json.dumps({"K": [[500, 0, 240], [0, 500, 180], [0, 0, 1]], "R": EYE, "t": [0, 0, 2]})

# field -> malformed values; each is sent in an otherwise valid request
BAD = {
    "mode": ["", "panorama", HUGE, "scene\x00"],
    "seed": ["-1", "abc", "9" * 5000, "1.5", "1e3", HUGE],
    "steps": ["-1", "501", "x", "9" * 5000],
    "pnp": ["nope", HUGE],
    "real_size": ["maybe", HUGE],
    "photo_texture": ["maybe", "2"],
    "prompts": [DEEP, NESTED, '{"points": ' + DEEP + "}", '"' + DEEP + '"', HUGE, "null", "[]", "3", '"text"',
                '{"points": "x"}', '{"points": [["a", 1]]}', '{"points": [[1, 2, 3]]}', '{"points": [[1e400, 1]]}',
                '{"points": [[' + "9" * 5000 + ", 1]]}", '{"boxes": [[50, 50, 10, 10]]}', '{"zzz": [[1, 1]]}',
                '{"points": [[99999, 1]]}', '{"points": []}', '{"points": [[1, 2]], "boxes": {"a": 1}}',
                '{"points": [' + ",".join(["[" + "1" * 1000 + ", 1]"] * 500) + "]}"],
    "camera": [DEEP, NESTED, '{"K": ' + DEEP + "}", '{"K": {}, "R": {}, "t": {}}', "null", "[]", HUGE,
               json.dumps({"K": HUGE[:200_000], "R": EYE, "t": [0, 0, 2]}),
               json.dumps({"K": [[1, 0], [0, 1]], "R": EYE, "t": [0, 0, 2]}),
               json.dumps({"K": EYE, "R": EYE, "t": [0, 0]}),
               json.dumps({"K": EYE, "R": [["a", 0, 0], [0, 1, 0], [0, 0, 1]], "t": [0, 0, 2]}),
               '{"K": [[NaN, 0, 0], [0, 1, 0], [0, 0, 1]], "R": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "t": [0, 0, 2]}',
               json.dumps({"K": EYE, "R": EYE, "t": [True, False, True]}),
               json.dumps({"K": EYE, "R": EYE})],
    "from_job": [HUGE, "../../etc/passwd", "a b", "\u00e9t\u00e9", "x" * 65],
}
WHOLE_FILES = {"image": [b"", b"dear diary\n" * 20, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100],
               "mask": [b"not a mask", b"\x89PNG\r\n\x1a\n"]}


def _form(field: str, value: str) -> tuple[dict, dict]:
    """(form data, files) of a valid request of the kind `field` belongs to, with `field` = `value`."""
    if field in ("camera", "from_job"):
        data = {"from_job": "0" * 16, "camera": CAMERA, field: value}
        return data, {}
    data = {"mode": "scene", "prompts": '{"points": [[10, 10]]}'} if field == "prompts" else {}
    return {**data, field: value}, {"image": ("monkey.png", PHOTO, "image/png")}


@pytest.fixture(scope="module")
def http():
    from starlette.testclient import TestClient

    from cupid.server import ServerSettings, create_app
    settings = ServerSettings(host="127.0.0.1", port=8000, token=TOKEN)
    app = create_app(settings, lambda: SteppedPipeline(step_s=0.0, steps=1))
    with TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False,
                    headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client
    app.state.jobs.close()


def _check(r, field: str | None) -> dict:
    assert r.status_code != 500, r.text[:2000]
    body = r.json()
    message = body["error"]["message"] if body.get("error") else ""
    assert len(message) < 800, message[:300]
    if r.status_code == 422 and field is not None:
        assert f"'{field}'" in message, message
    return body


def test_deeply_nested_json_fields_are_422_naming_the_field(http):
    for deep in (DEEP, NESTED):
        r = http.post("/v1/jobs", data={"mode": "scene", "prompts": deep},
                      files={"image": ("m.png", PHOTO, "image/png")})
        assert r.status_code == 422 and "'prompts'" in _check(r, "prompts")["error"]["message"]
        r = http.post("/v1/jobs", data={"from_job": "0" * 16, "camera": deep})
        assert r.status_code == 422 and "'camera'" in _check(r, "camera")["error"]["message"]
    r = http.post("/v1/jobs", data={"from_job": "0" * 16, "camera": '{"K": {}, "R": [], "t": []}'})
    assert r.status_code == 404   # an unknown job first (run it again), whatever the camera
    r = http.post("/v1/segment", data={"prompts": NESTED}, files={"image": ("m.png", PHOTO, "image/png")})
    assert r.status_code == 422 and "'prompts'" in _check(r, "prompts")["error"]["message"]


@pytest.mark.parametrize("field", sorted(BAD))
def test_every_malformed_form_field_is_a_422_naming_it(http, field):
    for value in BAD[field]:
        data, files = _form(field, value)
        r = http.post("/v1/jobs", data=data, files=files)
        body = _check(r, field)
        # a value the model may take after all (an extreme but valid seed) is queued; a refine of an
        # unknown job is 404; everything else is refused as malformed
        assert r.status_code in (422, 404) or (r.status_code == 202 and field in ("mode", "seed")), \
            (field, value[:80], r.status_code, body)


@pytest.mark.parametrize("field", sorted(WHOLE_FILES))
def test_malformed_uploads_are_never_500(http, field):
    for value in WHOLE_FILES[field]:
        files = {"image": ("monkey.png", PHOTO, "image/png"), field: (f"{field}.png", value, "image/png")}
        r = http.post("/v1/jobs", files=files)
        _check(r, None)
        assert r.status_code == 422, r.text[:300]


def test_long_inputs_are_quoted_short_in_messages(http):
    """A million-character value appears in no answer beyond a short quote."""
    for path in (f"/v1/jobs/{'z' * 8000}", f"/v1/jobs/{'z' * 8000}/preview"):
        r = http.get(path)
        assert r.status_code == 404 and len(r.json()["error"]["message"]) < 800
    r = http.post("/v1/jobs", data={"mode": "scene", "prompts": json.dumps({"points": [["a" * 900_000, 1]]})},
                  files={"image": ("m.png", PHOTO, "image/png")})
    assert r.status_code == 422 and len(r.text) < 1000


def test_a_camera_of_the_wrong_types_is_bad_input():
    """`{"K": {}}` reached numpy as a TypeError (a 500 on a refine of a known job)."""
    from cupid.errors import InputError
    from cupid.geometry import CameraPose
    for bad, why in (({"K": {}, "R": EYE, "t": [0, 0, 2]}, "K must be a 3x3 matrix"),
                     ({"K": EYE, "R": [[1, 0], [0, 1]], "t": [0, 0, 2]}, "R must be a 3x3 matrix"),
                     ({"K": EYE, "R": EYE, "t": ["a" * 100_000, 0, 0]}, "t must be 3 numbers"),
                     ({"K": EYE, "R": EYE}, "no 't'")):
        with pytest.raises(InputError, match=why) as info:
            CameraPose.from_dict(bad, 64, 48)
        assert len(info.value.message) < 100


def test_fields_parse_within_bounds():
    from cupid.errors import InputError
    from cupid.server.fields import MAX_JSON_DEPTH, json_depth_exceeds, json_field, quote
    assert not json_depth_exceeds('{"a": "[[[[[[[[[[[[[[[["}', 2)     # brackets inside strings do not count
    assert json_depth_exceeds("[" * (MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH)
    assert json_field("prompts", '{"points": [[1, 2]]}') == {"points": [[1, 2]]}
    with pytest.raises(InputError, match="'prompts' is not JSON"):
        json_field("prompts", "{")
    assert len(quote("x" * 10_000)) < 200 and quote("ab") == "'ab'"
