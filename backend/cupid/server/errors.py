"""The service's own refusals, each a CupidError with its HTTP status (the app turns them into
`{"error": {"code", "message"}}` answers)."""
from __future__ import annotations

import errno
from pathlib import Path

from ..errors import CupidError

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class Busy(CupidError):
    """The queue holds as many jobs (or as many waiting bytes) as it may: come back later."""

    code = "busy"
    http_status = 503

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DiskFull(CupidError):
    """A write failed for lack of space; the message names the directory so the user knows where."""

    code = "disk_full"
    http_status = 507

    def __init__(self, directory: Path | str):
        super().__init__(f"the disk holding {directory} is full: free some space there and run it again")
        self.directory = str(directory)


class Expired(CupidError):
    """The job finished but its result is gone (time-to-live, the result cap, or a DELETE)."""

    code = "expired"
    http_status = 410


class NotReady(CupidError):
    code = "not_ready"
    http_status = 409


class NotFound(CupidError):
    code = "not_found"
    http_status = 404


def is_disk_full(exc: BaseException | None) -> bool:
    """Is `exc` (or what caused it) a 'no space left' / 'quota exceeded' error?"""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class TooLarge(CupidError):
    """An upload (or what it decodes to) that no amount of waiting would let in."""

    code = "upload_too_large"
    http_status = 413
