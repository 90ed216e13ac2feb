"""The submit form's JSON fields (`prompts`, `camera`) and `from_job`, read within bounds.

Every malformed value is an InputError (422 `bad_input`) that names its field and quotes at most
`QUOTE_CHARS` of what was sent: a JSON text longer than `MAX_JSON_CHARS` or nested deeper than
`MAX_JSON_DEPTH` is refused before `json.loads` sees it (100,000 brackets would otherwise reach
Python's recursion limit). The camera's matrices are checked by `CameraPose.from_dict` once its job
is found (an unknown job is 404 "run the reconstruction again" whatever the camera).
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import InputError

MAX_JSON_CHARS = 65536    # 64 prompts take about 2 KB, a camera under 1 KB
MAX_JSON_DEPTH = 8        # prompts and camera need 3
QUOTE_CHARS = 120         # of a value quoted back in an error message
MAX_MESSAGE_CHARS = 600   # of any error message (what a message quotes from the input included)
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters (saying how long it was)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(value) if isinstance(value, str) else text
    return f"{text[:limit]!r}... ({len(text)} characters)"


def shorten(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """An error message of at most about `limit` characters (a quoted input is cut, not the advice)."""
    return message if len(message) <= limit else f"{message[:limit]}... ({len(message) - limit} characters cut)"


def json_depth_exceeds(text: str, limit: int) -> bool:
    """Does the JSON `text` nest arrays/objects deeper than `limit` (brackets inside strings skipped)?"""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def json_field(name: str, text: str) -> Any:
    """The form field `name` parsed as JSON, size and depth bounded first."""
    if len(text) > MAX_JSON_CHARS:
        raise InputError(f"form field '{name}' is {len(text)} characters long; at most {MAX_JSON_CHARS}")
    if json_depth_exceeds(text, MAX_JSON_DEPTH):
        raise InputError(f"form field '{name}' nests JSON deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"form field '{name}' is not JSON: {exc.msg} at character {exc.pos}") from None
    except (ValueError, RecursionError) as exc:   # e.g. a number of more than 4300 digits
        raise InputError(f"form field '{name}' is not usable JSON: {shorten(str(exc), QUOTE_CHARS)}") from None


@contextmanager
def naming(name: str) -> Iterator[None]:
    """InputErrors raised inside name the form field `name` (when they do not already)."""
    try:
        yield
    except InputError as exc:
        if f"'{name}'" in exc.message:
            raise
        raise InputError(f"form field '{name}': {shorten(exc.message)}") from None


def prompts_field(text: str) -> dict:
    """The `prompts` field as a JSON object (its contents are checked by `cupid.scene.masks.parse_prompts`)."""
    value = json_field("prompts", text)
    if not isinstance(value, dict):
        raise InputError('form field \'prompts\' must be a JSON object {"points": [[x, y], ...], '
                         f'"boxes": [[x0, y0, x1, y1], ...]}}, not {quote(value)}')
    return value


def camera_field(text: str) -> dict:
    """The refine form's camera: JSON with K (3x3), R (3x3), t (3), in the photo's pixels."""
    cam = json_field("camera", text) if text.strip() else None
    if not isinstance(cam, dict) or not {"K", "R", "t"} <= set(cam):
        raise InputError('form field \'camera\' must be JSON {"K": 3x3, "R": 3x3, "t": 3} in the photo\'s pixels')
    return {k: cam[k] for k in ("K", "R", "t")}   # checked by CameraPose.from_dict once the job is found


def job_id_field(text: str) -> str:
    """`from_job`: a job id as this service hands them out (letters, digits, '-', '_')."""
    if not _JOB_ID.fullmatch(text):
        raise InputError(f"form field 'from_job' is not a job id: {quote(text)}")
    return text
