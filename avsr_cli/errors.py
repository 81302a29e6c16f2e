"""Errors a user can act on: each carries a one-line message naming the file and the problem."""

from __future__ import annotations


class AvsrError(Exception):
    """Base class for user-facing errors (printed as one line by the CLI, no traceback)."""

    exit_code = 1


class MediaError(AvsrError):
    """A media file cannot be read or holds no usable stream."""


class CheckpointError(AvsrError):
    """A checkpoint is missing, unknown, or malformed."""

    exit_code = 2


class UsageError(AvsrError):
    """The request itself cannot be carried out (e.g. an unwritable output directory): nothing was done."""

    exit_code = 2


class DownloadError(AvsrError):
    """A model part could not be fetched, verified or converted (the message says which and what to do)."""


class SourceRefusedError(DownloadError):
    """A model part's source is refused before anything is read from it: a URL scheme avsr does not fetch,
    or a `file:` URL naming a device, FIFO or folder (a card and the servers it names are untrusted)."""

    exit_code = 2


class UnsafeNameError(AvsrError):
    """A name from outside (a card, a server, a checkpoint, a file name) would lead outside its folder."""

    exit_code = 2


class OutputError(AvsrError):
    """An output file cannot be written (disk full, name too long, no permission): nothing partial is left."""
