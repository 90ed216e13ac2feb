"""A stand-in for the Hugging Face Hub on loopback (point HF_ENDPOINT at it): the few routes
huggingface_hub's downloads use, serving files held in memory, so `cupid download` runs its real
client code here, where the Hub cannot be reached. Every request is logged in `requests`."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import ThreadingHTTPServer
from urllib.parse import unquote, urlparse

from tests.helpers.net import QuietHandler

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """`repos`: {repo id: {path in the repo: bytes}}. Use as a context manager; `.url` is HF_ENDPOINT."""

    def __init__(self, repos: dict[str, dict[str, bytes]], chunk: int = 64 * 1024, delay: float = 0.0) -> None:
        self.repos, self.chunk, self.delay, self.requests = repos, chunk, delay, []
        hub = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:
                hub.requests.append(("HEAD", self.path))
                self._file(body=False)

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path))
                path = urlparse(self.path).path
                if path.startswith("/api/models/"):
                    self._api(unquote(path[len("/api/models/"):]))
                else:
                    self._file(body=True)

            def _api(self, rest: str) -> None:
                for repo, files in hub.repos.items():
                    if rest == repo or rest.startswith(repo + "/"):
                        tail = rest[len(repo):].strip("/")
                        if tail.startswith("tree/"):
                            items = [{"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                     for n, b in sorted(files.items())]
                            return self._send(200, json.dumps(items).encode())
                        info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                "siblings": [{"rfilename": n, "size": len(b)} for n, b in sorted(files.items())]}
                        return self._send(200, json.dumps(info).encode())
                self._send(404, b'{"error": "Repository not found"}')

            def _file(self, body: bool) -> None:
                parts = unquote(urlparse(self.path).path).strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._send(404, b"{}")
                repo, name = "/".join(parts[:2]), "/".join(parts[4:])
                data = hub.repos.get(repo, {}).get(name)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if body:
                    for i in range(0, len(data), hub.chunk):
                        self.wfile.write(data[i:i + hub.chunk])
                        self.wfile.flush()
                        time.sleep(hub.delay)   # a download that takes a while: progress in between

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
