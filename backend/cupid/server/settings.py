"""What one `cupid serve` run was started with, and which Host/Origin headers address it."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARD = {"0.0.0.0", "::", ""}
MB = 1024 * 1024


@dataclass
class ServerSettings:
    host: str
    port: int
    token: str
    device: str = "auto"
    dtype: str = "auto"                  # the networks' precision (`cupid serve` stores the resolved name)
    max_upload_bytes: int = 64 * MB
    result_ttl: float = 3600.0
    preload: bool = False
    max_queue: int = 16                  # jobs queued or running; one more is answered 503 busy
    max_queued_bytes: int = 1024 * MB    # decoded inputs spooled on disk for those jobs
    max_result_bytes: int = 2048 * MB    # finished zips kept; the oldest go first past it
    max_kept_bytes: int = 512 * MB       # stage 1s kept in memory for refines; the least recently used go first
    max_objects: int = 64                # objects of a scene's label image; more: 422 before any is made
    max_prompts: int = 64                # points + boxes of one request; more: 422 before any model runs
    # slow and hostile clients (cupid.server.connections; the plain server's, not Ray Serve's proxy)
    max_connections: int = 64            # open at once; one more takes an idle/slow one's place, else 503
    idle_timeout: float = 5.0            # seconds a connection may send nothing (before or between requests)
    header_timeout: float = 10.0         # seconds for a request line and headers to arrive (then 408)
    body_timeout: float = 10.0           # window over which a request body must bring min_body_rate
    min_body_rate: int = 1024            # bytes a second a body brings at least, per body_timeout window
    write_timeout: float = 20.0          # seconds an answer may wait on a client that does not read

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def host_allowed(self, host: str) -> bool:
        """Is `host` (a Host header, `name:port`) an address of this server?

        Bound to loopback: any loopback spelling. Bound to one address: that address. Bound to all
        interfaces: `localhost` or any IP literal, never a DNS name (a rebinding attack needs one)."""
        name, port = split_host(host)
        if name is None or port != self.port:
            return False
        bound = self.host.strip("[]").lower()
        if bound in LOOPBACK:
            return name in LOOPBACK
        if bound in WILDCARD:
            return name == "localhost" or _is_ip(name)
        return name == bound or (_is_ip(name) and _is_ip(bound)
                                 and ipaddress.ip_address(name) == ipaddress.ip_address(bound))

    def origin_allowed(self, origin: str, host: str) -> bool:
        """A browser's Origin is accepted only for a same-origin request to this server."""
        return origin.lower() == f"http://{host.lower()}" and self.host_allowed(host)


def split_host(host: str) -> tuple[str | None, int | None]:
    """`name:port` / `[v6]:port` -> (lower-case name without brackets, port); (None, None) if malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1:]
        if end < 0 or not rest.startswith(":"):
            return None, None
        port_text = rest[1:]
    else:
        name, sep, port_text = host.rpartition(":")
        if not sep or ":" in name:
            return None, None
    if not name or not port_text.isdigit():
        return None, None
    return name, int(port_text)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
