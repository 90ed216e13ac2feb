"""What the set-up makes of the programs it runs: pip's output as progress, and a failed program's
output as the one line the panel shows (a full disk, no network, Windows' path limit, or the
program's own last error), always with what to do next."""
from __future__ import annotations

import re
import shutil
from typing import Callable, Optional, Sequence

DISK_FULL = re.compile(r"No space left on device|Errno 28\b|ENOSPC|There is not enough space on the disk", re.I)
NO_NETWORK = re.compile(r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
                        r"resolution|Name or service not known|getaddrinfo failed|Network is unreachable|"
                        r"ConnectTimeout|Read timed out|ProxyError|SSLError|CERTIFICATE_VERIFY_FAILED", re.I)
LONG_PATH = re.compile(r"Long Path|path too long|filename or extension is too long", re.I)


def gb(n: float) -> str:
    return f"{n / 1024 ** 3:.2f} GB" if n >= 1024 ** 3 else f"{n / 1024 ** 2:.0f} MB"


class PipProgress:
    """How far a ``pip install`` is, from its output lines (``--progress-bar raw`` adds bytes where
    pip has it: 24.1 and newer)."""

    def __init__(self, report: Callable[[float, str], None], what: str) -> None:
        self.report, self.what = report, what
        self.within, self.current = 0.02, ""

    def __call__(self, line: str) -> None:
        text = line.strip()
        raw = re.match(r"Progress (\d+) of (\d+)", text)
        if raw and int(raw.group(2)) > 0:
            done, total = int(raw.group(1)), int(raw.group(2))
            self.report(self.within, f"{self.what}: {self.current} {gb(done)} of {gb(total)}".replace("  ", " "))
            return
        m = re.match(r"(Collecting|Downloading|Processing|Using cached) (\S+)(.*)", text)
        if m:
            self.current = m.group(2).rsplit("/", 1)[-1]
            size = re.search(r"\(([\d.]+ [kMG]B)\)", m.group(3))
            self.within = min(self.within + 0.02, 0.6)
            self.report(self.within, f"{self.what}: {m.group(1).lower()} {self.current}"
                                     + (f" ({size.group(1)})" if size else ""))
        elif text.startswith("Installing collected packages"):
            count = len(text.split(":", 1)[1].split(","))
            self.within = 0.7
            self.report(self.within, f"{self.what}: installing {count} package(s)")
        elif text.startswith("Successfully installed"):
            self.within = 1.0
            self.report(self.within, f"{self.what}: installed")


def explain_failure(what: str, lines: Sequence[str], where: str, free_bytes: Optional[int] = None) -> str:
    """One line for a failed program (pip, cupid): the disk, the network, Windows' paths, or its last error."""
    text = "\n".join(lines)
    if DISK_FULL.search(text):
        free = f" ({gb(free_bytes)} free)" if free_bytes is not None else ""
        return (f"{what} failed: the disk holding {where} is full{free}. Free some space and press Set Up Backend "
                f"again; it resumes here")
    if LONG_PATH.search(text):
        return (f"{what} failed: a path grew past Windows' 260-character limit. Turn on long paths or choose a short "
                f"Backend folder in the add-on preferences, then press Set Up Backend again")
    if NO_NETWORK.search(text):
        return (f"{what} failed: no connection to the package index (check the network, or a proxy: HTTPS_PROXY), "
                f"then press Set Up Backend again; it resumes here")
    errors = [ln.strip() for ln in lines if ln.strip().startswith("ERROR:") or "Error:" in ln]
    last = (errors or [ln.strip() for ln in lines if ln.strip()] or ["no output"])[-1]
    last = re.sub(r"^ERROR:\s*", "", last)
    return f"{what} failed: {last[:300]} (details in the set-up log); press Set Up Backend again to retry"


def free_space(path: str) -> Optional[int]:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
