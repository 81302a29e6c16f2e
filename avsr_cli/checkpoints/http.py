"""Bounded streaming fetch of one file over https, http or `file:`, resumable with HTTP Range.

Cards and the servers they name are untrusted: a file is read from https, http (redirects only to these) or
a `file:` URL naming a regular file, and never past the size its card declares, or `MAX_PART_BYTES`.
A download goes to `<file>.part` (kept when interrupted, resumed next time); what fails its check goes to
`<root>/quarantine/`. Google Drive's large-file confirmation page is followed; any other HTML page is refused.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import stat
import urllib.error
import urllib.request
import urllib.response
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urljoin, urlsplit

from ..errors import DownloadError, SourceRefusedError
from ..storage import offline
from ..version import __version__
from .zoo import URL_SCHEMES

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


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


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


def check_space(folder: Path, needed: int | None, label: str, resumable: bool) -> None:
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


def hash_file(path: Path, hasher=None):
    hasher = hasher or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            hasher.update(block)
    return hasher


def quarantine(path: Path, root: Path, digest: str) -> Path:
    target = root / "quarantine" / f"{path.name.removesuffix('.part')}.{digest[:12]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


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


def _download(
    url: str, partial: Path, offset: int, size: int | None, label: str, dest: Path, progress, auth=None
) -> None:
    if size is not None:
        check_space(partial.parent, size - offset, label, resumable=offset > 0)
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
            check_space(partial.parent, total - offset, label, resumable=offset > 0)
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


def what_came_back(url: str) -> str:
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
