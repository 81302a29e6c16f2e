"""Real HTTP servers on 127.0.0.1 for the download tests: a file host with a fake Google Drive, and a fake
Hugging Face Hub implementing the endpoints huggingface-hub calls (checked in its source: `model_info` ->
GET /api/models/{repo}[/revision/{rev}]; `snapshot_download` -> that, then GET
/api/models/{repo}/tree/{commit} and HEAD/GET /{repo}/resolve/{commit}/{file}, which must carry
X-Repo-Commit, ETag and Content-Length; gated repos answer 401/403 with `X-Error-Code: GatedRepo`)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

Request = tuple[str, str, dict[str, str]]  # method, path, headers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        self.server.log.append((method, self.path, dict(self.headers)))
        self.server.app(self, method)

    def log_message(self, *args) -> None:  # quiet
        pass


class Server:
    """A ThreadingHTTPServer on a free loopback port, in a daemon thread. `stop()` ends it; a timer stops it
    anyway after `lifetime` seconds, so a failing test never leaves it running."""

    def __init__(self, app: Callable[[BaseHTTPRequestHandler, str], None], lifetime: float = 300.0) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.app, self.httpd.log, self.httpd.stalled = app, [], threading.Event()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.timer = threading.Timer(lifetime, self.stop)
        self.timer.daemon = True
        self.timer.start()
        self.stopped = False

    @property
    def log(self) -> list[Request]:
        return self.httpd.log

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.timer.cancel()
            self.httpd.shutdown()
            self.httpd.server_close()


def send(
    h: BaseHTTPRequestHandler,
    method: str,
    body: bytes,
    *,
    status: int = 200,
    ctype: str = "application/octet-stream",
    headers: dict[str, str] | None = None,
    cut_at: int | None = None,
    stall: threading.Event | None = None,
) -> None:
    """Send `body`, honouring `Range: bytes=N-`. `cut_at`: send only that many body bytes, then drop the
    connection (a truncated response); `stall`: send half the body, then wait for the event and drop."""
    start = 0
    match = re.match(r"bytes=(\d+)-$", h.headers.get("Range", ""))
    if match and status == 200 and int(match.group(1)) < len(body):
        start, status = int(match.group(1)), 206
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body) - start))
    h.send_header("Accept-Ranges", "bytes")
    if status == 206:
        h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    h.end_headers()
    if method == "HEAD":
        return
    data = body[start:]
    if stall is not None:
        cut_at = len(data) // 2
    if cut_at is not None:
        h.wfile.write(data[:cut_at])
        h.wfile.flush()
        if stall is not None:
            h.server.stalled.set()
            stall.wait(60)
        h.close_connection = True
        return
    h.wfile.write(data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def etag(name: str, data: bytes) -> str:
    """The Hub's ETag: sha256 for LFS files (weights), the git blob id for small text files."""
    return sha256(data) if name.endswith(".safetensors") else git_sha1(data)


@dataclass
class FileHost:
    """Files by path, Google Drive's large-file flow at /uc?id=ID -> confirmation form -> /download, and
    canned failures (status codes, HTML pages, a response cut once)."""

    files: dict[str, bytes] = field(default_factory=dict)
    drive: dict[str, bytes] = field(default_factory=dict)  # Drive file id -> bytes ("quota": quota page)
    statuses: dict[str, int] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)

    def __call__(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path in self.statuses:
            send(
                h,
                method,
                b"<html><title>Forbidden</title></html>",
                status=self.statuses[url.path],
                ctype="text/html",
            )
        elif url.path == "/uc" and query.get("id") == "quota":
            page = (
                b"<html><head><title>Google Drive - Quota exceeded</title></head>"
                b"<body>Too many users have viewed or downloaded this file recently.</body></html>"
            )
            send(h, method, page, ctype="text/html; charset=utf-8")
        elif url.path == "/uc" and query.get("id") in self.drive:
            fid = query["id"]
            page = (
                "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
                '<form id="download-form" action="/download" method="get">'
                '<input type="submit" id="uc-download-link" value="Download anyway"/>'
                f'<input type="hidden" name="id" value="{fid}">'
                '<input type="hidden" name="export" value="download">'
                '<input type="hidden" name="confirm" value="t">'
                '<input type="hidden" name="uuid" value="u-123">'
                "</form></body></html>"
            )
            send(h, method, page.encode(), ctype="text/html; charset=utf-8")
        elif url.path == "/download" and query.get("confirm") == "t" and query.get("uuid") == "u-123":
            body = self.drive[query["id"]]
            send(
                h, method, body, headers={"Content-Disposition": f'attachment; filename="{query["id"]}.pth"'}
            )
        elif url.path in self.files:
            cut = len(self.files[url.path]) // 3 if url.path in self.cut_once else None
            self.cut_once.discard(url.path)
            send(h, method, self.files[url.path], cut_at=cut)
        else:
            send(h, method, b"not found", status=404, ctype="text/plain")


@dataclass
class HubRepo:
    files: dict[str, bytes]
    sha: str
    gated: bool = False
    tokens: tuple[str, ...] = ()  # tokens whose account accepted the licence
    stall: dict[str, threading.Event] = field(default_factory=dict)  # file -> event (stall its next GET)
    served: dict[str, bytes] = field(default_factory=dict)  # file -> other bytes sent under its ETag
    etags: dict[str, str] = field(default_factory=dict)  # file -> the ETag header sent instead of its digest
    html_page: str | None = None  # the API answers with this HTML page (a proxy's login page, say)
    locations: dict[str, str] = field(default_factory=dict)  # file -> where its resolve redirects (302)


class FakeHub:
    """The Hub endpoints huggingface-hub uses to download a model repo (see the module docstring)."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}

    def add(
        self, repo: str, files: dict[str, bytes], gated: bool = False, tokens: tuple[str, ...] = ()
    ) -> HubRepo:
        sha = hashlib.sha1(repo.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[repo] = HubRepo(files, sha, gated, tokens)
        return self.repos[repo]

    def __call__(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = unquote(urlsplit(h.path).path)
        if m := re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path):
            repo = self.repos.get(m.group(1))
            if repo is None:
                return self._not_found(h, method)
            if repo.html_page is not None:
                return send(h, method, repo.html_page.encode(), ctype="text/html; charset=utf-8")
            siblings = [
                {"rfilename": f, "size": len(b), "blobId": git_sha1(b), **self._lfs(f, b, "sha256")}
                for f, b in repo.files.items()
            ]
            info = {
                "id": m.group(1),
                "sha": repo.sha,
                "siblings": siblings,
                "gated": "manual" if repo.gated else False,
            }
            return send(h, method, json.dumps(info).encode(), ctype="application/json")
        if m := re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)$", path):
            repo = self.repos.get(m.group(1))
            if repo is None:
                return self._not_found(h, method)
            tree = [
                {"type": "file", "path": f, "size": len(b), "oid": git_sha1(b), **self._lfs(f, b, "oid")}
                for f, b in repo.files.items()
            ]
            return send(h, method, json.dumps(tree).encode(), ctype="application/json")
        if m := re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path):
            repo = self.repos.get(m.group(1))
            if repo is None:
                return self._not_found(h, method)
            if repo.gated:
                token = h.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                if not token or token not in repo.tokens:
                    status = 403 if token else 401
                    msg = f"Access to model {m.group(1)} is restricted" + (
                        " and you are not in the authorized list" if token else ""
                    )
                    return send(
                        h,
                        method,
                        msg.encode(),
                        status=status,
                        ctype="text/plain",
                        headers={"X-Error-Code": "GatedRepo", "X-Error-Message": msg},
                    )
            body = repo.files.get(m.group(3))
            if body is None:
                return send(
                    h,
                    method,
                    b"",
                    status=404,
                    headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.sha},
                )
            tag = repo.etags.get(m.group(3), etag(m.group(3), body))
            headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{tag}"'}
            if m.group(3) in repo.locations:  # as the Hub sends LFS files to its CDN
                headers = {
                    "X-Repo-Commit": repo.sha,
                    "X-Linked-Etag": f'"{tag}"',
                    "X-Linked-Size": str(len(body)),
                    "Location": repo.locations[m.group(3)],
                }
                return send(h, method, b"", status=302, headers=headers)
            stall = repo.stall.pop(m.group(3), None) if method == "GET" else None
            return send(h, method, repo.served.get(m.group(3), body), headers=headers, stall=stall)
        send(h, method, b"", status=404)

    @staticmethod
    def _lfs(name: str, data: bytes, key: str) -> dict:
        return (
            {"lfs": {"size": len(data), key: sha256(data), "pointerSize": 134}}
            if len(etag(name, data)) == 64
            else {}
        )

    def _not_found(self, h, method) -> None:
        send(
            h,
            method,
            b"",
            status=404,
            headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
        )


def pip_env(index_url: str, find_links: str) -> dict[str, str]:
    """Environment under which pip reads packages only from `index_url` (a loopback index) and the folder
    `find_links` (the machine's own find-links and extra indexes overridden), with no cache and no retries."""
    return {
        "PIP_INDEX_URL": index_url,
        "PIP_EXTRA_INDEX_URL": index_url,
        "PIP_FIND_LINKS": find_links,
        "PIP_NO_CACHE_DIR": "1",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "5",
    }
