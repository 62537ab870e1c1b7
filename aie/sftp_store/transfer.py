"""SFTP operations on one connection: directories, uploads, downloads, deletion."""

from __future__ import annotations

import contextlib
import errno
import logging
import posixpath
import stat
import threading
import uuid
from collections.abc import Iterator
from typing import Protocol

import paramiko

from .connection import Connection

_logger = logging.getLogger(__name__)

_PREFETCH_REQUESTS = 64
# Uploads are written under this hidden name first and renamed into place when complete.
TEMP_PREFIX = ".aie-upload."
# A temporary file untouched for this long is the leftover of a client that died (an
# upload in progress writes to it all the time, or fails within its I/O timeout).
STALE_UPLOAD_SECONDS = 2 * 3600


def is_dir(attrs: paramiko.SFTPAttributes) -> bool:
    return stat.S_ISDIR(attrs.st_mode or 0)


# paramiko turns an SFTP status into OSError(errno, text) for "no such file" and
# "permission denied", and into OSError(text) for everything else, never with the path.
_SFTP_STATUS_ERRORS = (OSError, FileNotFoundError, PermissionError)


def with_path(exc: OSError, path: str, action: str) -> OSError:
    """The SFTP error ``exc`` again, naming the remote ``path`` and the request."""
    if exc.errno is not None:
        # OSError(errno, ...) picks the matching subclass (FileNotFoundError, ...).
        return OSError(exc.errno, f"{exc.strerror or exc} (SFTP {action})", path)
    text = str(exc) or "the server gave no reason"
    return OSError(f"SFTP {action} of {path} failed: {text}")


@contextlib.contextmanager
def naming(path: str, action: str) -> Iterator[None]:
    """Let the SFTP errors raised inside name ``path``."""
    try:
        yield
    except _SFTP_STATUS_ERRORS as exc:
        if exc.filename is not None or type(exc) not in _SFTP_STATUS_ERRORS:
            raise  # already names a path, or is not an SFTP status (e.g. a timeout)
        raise with_path(exc, path, action) from exc


def makedirs(sftp: paramiko.SFTPClient, path: str, known: set[str]) -> None:
    """``mkdir -p``, tolerant of others creating the same directories concurrently."""
    if path in known:
        return
    try:
        with naming(path, "stat"):
            attrs = sftp.stat(path)
    except FileNotFoundError:
        parent = posixpath.dirname(path)
        if parent != path:
            makedirs(sftp, parent, known)
        try:
            sftp.mkdir(path)
        except OSError as exc:
            # Created concurrently? If not, the mkdir error is the one to report.
            try:
                attrs = sftp.stat(path)
            except OSError:
                raise with_path(exc, path, "mkdir") from exc
            if not is_dir(attrs):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path) from None
    else:
        if not is_dir(attrs):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
    known.add(path)


def _replace(sftp: paramiko.SFTPClient, source: str, destination: str) -> None:
    try:
        sftp.posix_rename(source, destination)  # atomic overwrite (OpenSSH extension)
        return
    except OSError as exc:
        try:
            in_the_way = is_dir(sftp.stat(destination))
        except OSError:
            in_the_way = False
        if in_the_way:
            raise IsADirectoryError(
                errno.EISDIR, "Is a directory, not replaced by the uploaded file", destination
            ) from exc
        if exc.errno is not None:  # no such file, permission denied: a real refusal
            raise with_path(exc, destination, "posix-rename") from exc
    # Not supported (the server's reason is only text): plain SFTP v3 rename, which
    # refuses to overwrite.
    with contextlib.suppress(FileNotFoundError), naming(destination, "remove"):
        sftp.remove(destination)
    with naming(destination, "rename"):
        sftp.rename(source, destination)


class UploadStopped(Exception):
    """An upload given up midway because its batch was stopped (failure or Ctrl-C)."""


def temp_path_for(remote_path: str) -> str:
    """A new hidden name, beside ``remote_path``, to upload it under."""
    return posixpath.join(posixpath.dirname(remote_path), f"{TEMP_PREFIX}{uuid.uuid4().hex}")


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def upload_file(
    conn: Connection, local_path: str, remote_path: str, temp_path: str, stop: threading.Event | None = None
) -> float:
    """Upload the file ``local_path`` (see upload_stream)."""
    with open(local_path, "rb") as source:
        return upload_stream(conn, source, remote_path, temp_path, stop)


def upload_stream(
    conn: Connection, source: Readable, remote_path: str, temp_path: str, stop: threading.Event | None = None
) -> float:
    """Upload what ``source`` reads as ``temp_path``, renamed to ``remote_path`` once complete.

    ``stop`` is checked before each write: once it is set, the upload is abandoned.
    Returns the uploaded file's modification time: the server's clock.
    """
    sftp = conn.sftp
    chunk = conn.write_size
    try:
        with naming(remote_path, "upload"):
            sent = 0
            with sftp.open(temp_path, "wb") as target:
                target.set_pipelined(True)
                target.MAX_REQUEST_SIZE = chunk
                while data := source.read(chunk):
                    if stop is not None and stop.is_set():
                        raise UploadStopped(f"Upload to {remote_path} stopped")
                    target.write(data)
                    sent += len(data)
            attrs = sftp.stat(temp_path)
        if attrs.st_size != sent:
            raise OSError(errno.EIO, f"Upload incomplete: {attrs.st_size} of {sent} bytes arrived", remote_path)
        _replace(sftp, temp_path, remote_path)
        return float(attrs.st_mtime or 0)
    except BaseException:
        if conn.is_active():
            with contextlib.suppress(Exception):
                sftp.remove(temp_path)
        raise


def download_file(conn: Connection, remote_path: str, local_path: str) -> None:
    chunk = conn.read_size
    with naming(remote_path, "download"), conn.sftp.open(remote_path, "rb") as source:
        source.MAX_REQUEST_SIZE = chunk
        size = source.stat().st_size or 0
        source.prefetch(size, _PREFETCH_REQUESTS)
        received = 0
        with open(local_path, "wb") as target:
            while data := source.read(chunk):
                target.write(data)
                received += len(data)
    if received < size:
        raise OSError(
            errno.EIO,
            f"Download incomplete: {received} of {size} bytes arrived",
            remote_path,
        )


def rmtree(sftp: paramiko.SFTPClient, path: str) -> None:
    with naming(path, "list"):
        entries = sftp.listdir_attr(path)
    for entry in entries:
        child = posixpath.join(path, entry.filename)
        try:
            # readdir attributes are lstat ones: directory symlinks are not followed
            if is_dir(entry):
                rmtree(sftp, child)
            else:
                with naming(child, "remove"):
                    sftp.remove(child)
        except FileNotFoundError:
            pass
    with contextlib.suppress(FileNotFoundError), naming(path, "rmdir"):
        sftp.rmdir(path)


def sweep_stale_uploads(sftp: paramiko.SFTPClient, directory: str, older_than: float) -> None:
    """Remove the temporary upload files in ``directory`` last written before ``older_than``.

    Best effort: a failure is logged, never raised (the upload it follows succeeded).
    """
    try:
        entries = sftp.listdir_attr(directory)
    except OSError as exc:
        _logger.warning("Could not look for stale uploads in %s: %s", directory, exc)
        return
    for entry in entries:
        if entry.filename.startswith(TEMP_PREFIX) and (entry.st_mtime or 0) < older_than:
            path = posixpath.join(directory, entry.filename)
            try:
                sftp.remove(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                _logger.warning("Could not remove the stale upload %s: %s", path, exc)
            else:
                _logger.info("Removed the stale upload %s", path)
