"""Hub parts: files of a Hugging Face Hub repo fetched into huggingface-hub's own cache.

HF_TOKEN, HF_HUB_OFFLINE, HF_ENDPOINT and HF_HOME apply. The Hub's answers are untrusted too: a file name
becomes a path only through `safe_join`, an ETag or commit id only when it is a hex digest, and the bytes
must hash to their ETag (see `_fetch_blob`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import DownloadError, UnsafeNameError
from ..storage import atomic_write_text, offline, safe_join
from .http import HTTP_SCHEMES, check_space, download_file, hash_file, quarantine, what_came_back
from .sources import DESCRIPTION_FILES
from .zoo import Part

if TYPE_CHECKING:
    from rich.progress import Progress

DEFAULT_HUB_PATTERNS = [*DESCRIPTION_FILES, "*.safetensors"]
HEX_DIGEST_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # git blob sha1 or LFS sha256


def hub_cached(repo: str, revision: str | None, patterns: list[str]) -> Path | None:
    """The local snapshot of `repo` holding `patterns`, without touching the network; None if absent."""
    from huggingface_hub import snapshot_download  # lazy: ~70 ms to import, and most models need no Hub

    try:
        return Path(
            snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True)
        )
    except Exception:  # LocalEntryNotFoundError, IncompleteSnapshotError, or an unreadable cache
        return None


def _hub_error(exc: Exception, repo: str, label: str, token_given: bool) -> DownloadError:
    # lazy: huggingface-hub takes ~70 ms to import, and most models need no Hub
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
            f"{label}: {constants.ENDPOINT} answered {url} with {what_came_back(url)}, not the Hub's JSON: "
            f"a proxy or sign-in page? Check HF_ENDPOINT and the network"
        )
    return DownloadError(
        f"{label}: cannot reach the Hub at {constants.ENDPOINT} for {repo} "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); no network?"
    )


def _blob_digest(path: Path, etag: str) -> str | None:
    """The digest of `path` in the form of a Hub ETag: sha256 (LFS files) or git blob sha1; None if the
    ETag is neither."""
    if len(etag) == 64:
        return hash_file(path).hexdigest()
    if len(etag) == 40:
        hasher = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
        return hash_file(path, hasher).hexdigest()
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
    repo: str,
    filename: str,
    commit: str,
    storage: Path,
    label: str,
    root: Path,
    token: str | None,
    force: bool,
    progress: Progress | None,
) -> str:
    """One file of a Hub repo into huggingface-hub's blob store (`blobs/<etag>`), resumable, checked
    against its ETag; returns the ETag.

    Why not `hf_hub_download`: huggingface-hub (2.4) names the blob after the server's ETag without
    checking it (`os.path.join(storage, "blobs", etag)`), so `ETag: "../../x"` writes outside the cache,
    and it never checks the bytes against the ETag. Here the ETag must be a hex digest and the bytes must
    hash to it.
    """
    # lazy: huggingface-hub takes ~70 ms to import, and most models need no Hub
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=commit), token=token)
    etag = _check_digest(meta.etag, "an ETag", f"{label}: {filename}")
    blob = safe_join(storage / "blobs", etag)
    if blob.exists() and not force:
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
        moved = quarantine(partial, root, digest or "")
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
    revision: str | None,
    progress: Progress | None,
    token: str | None = None,
    force: bool = False,
) -> tuple[Path, str | None]:
    """Fetch a Hub part into the huggingface-hub cache; returns (snapshot directory, commit).

    Files are fetched first into the cache's blob store with HTTP Range resume (huggingface-hub itself
    restarts an interrupted file from zero), then `snapshot_download` records refs and snapshot links.
    """
    # lazy: huggingface-hub takes ~70 ms to import, and most models need no Hub
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import filter_repo_objects

    repo, patterns = part.source, part.patterns or DEFAULT_HUB_PATTERNS
    if offline():
        cached = hub_cached(repo, revision, patterns)
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
            and (force or not isinstance(try_to_load_from_cache(repo, s.rfilename, revision=commit), str))
        ]
        (storage / "blobs").mkdir(parents=True, exist_ok=True)
        check_space(storage, sum(s.size or 0 for s in missing), label, resumable=True)
        fetched = {
            s.rfilename: _fetch_blob(repo, s.rfilename, commit, storage, label, root, token, force, progress)
            for s in missing
        }
        path = _link_snapshot(storage, commit, revision, fetched)
    except (DownloadError, UnsafeNameError):
        raise
    except Exception as exc:  # huggingface-hub's errors, and its HTTP client's connection errors
        raise _hub_error(exc, repo, label, token is not None or bool(os.environ.get("HF_TOKEN"))) from None
    return path, commit
