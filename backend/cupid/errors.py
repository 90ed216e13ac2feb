"""Errors that cross module boundaries, each with a stable machine-readable code.

The CLI prints `message` without a traceback; the service returns `{"error": {"code", "message"}}`.
"""
from __future__ import annotations


class CupidError(Exception):
    """Base of every error meant for a user; `code` is stable, `message` is one clear sentence."""

    code = "cupid_error"
    http_status = 500

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InputError(CupidError):
    """The photo, mask or options given by the user cannot be used (corrupt, too large, empty mask...)."""

    code = "bad_input"
    http_status = 422


class CheckpointError(CupidError):
    """A checkpoint is missing, unreadable or does not match the network it claims to be."""

    code = "bad_checkpoint"
    http_status = 500


class Cancelled(CupidError):
    """The job was cancelled by the user (raised between sampler steps)."""

    code = "cancelled"
    http_status = 409


class CliError(CupidError):
    """A command-line usage problem (a bad flag value, a missing file): printed as one line, exit status 2."""

    code = "usage"
    http_status = 400
