"""SFTP operations on one connection: directories, uploads, downloads, deletion."""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import uuid

import paramiko

from .pool import Connection

_PREFETCH_REQUESTS = 64
# Uploads are written under this hidden name first and renamed into place when complete.
TEMP_PREFIX = ".aie-upload."


def is_dir(attrs: paramiko.SFTPAttributes) -> bool:
    return stat.S_ISDIR(attrs.st_mode or 0)


def makedirs(sftp: paramiko.SFTPClient, path: str, known: set[str]) -> None:
    """``mkdir -p``, tolerant of others creating the same directories concurrently."""
    if path in known:
        return
    try:
        attrs = sftp.stat(path)
    except FileNotFoundError:
        parent = posixpath.dirname(path)
        if parent != path:
            makedirs(sftp, parent, known)
        try:
            sftp.mkdir(path)
        except OSError:
            # Created concurrently? (stat raises if it really is missing.)
            attrs = sftp.stat(path)
            if not is_dir(attrs):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path) from None
    else:
        if not is_dir(attrs):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
    known.add(path)


def _replace(sftp: paramiko.SFTPClient, source: str, destination: str) -> None:
    try:
        sftp.posix_rename(source, destination)  # atomic overwrite (OpenSSH extension)
    except OSError:
        # Plain SFTP v3 rename refuses to overwrite.
        with contextlib.suppress(FileNotFoundError):
            sftp.remove(destination)
        sftp.rename(source, destination)


def upload_file(conn: Connection, local_path: str, remote_path: str) -> None:
    sftp = conn.sftp
    directory = posixpath.dirname(remote_path)
    temp_path = posixpath.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    chunk = conn.write_size
    try:
        with open(local_path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            with sftp.open(temp_path, "wb") as target:
                target.set_pipelined(True)
                target.MAX_REQUEST_SIZE = chunk
                while data := source.read(chunk):
                    target.write(data)
        written = sftp.stat(temp_path).st_size
        if written != size:
            raise OSError(
                errno.EIO,
                f"Upload incomplete: {written} of {size} bytes arrived",
                remote_path,
            )
        _replace(sftp, temp_path, remote_path)
    except BaseException:
        if conn.is_active():
            with contextlib.suppress(Exception):
                sftp.remove(temp_path)
        raise


def download_file(conn: Connection, remote_path: str, local_path: str) -> None:
    chunk = conn.read_size
    with conn.sftp.open(remote_path, "rb") as source:
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
    for entry in sftp.listdir_attr(path):
        child = posixpath.join(path, entry.filename)
        try:
            # readdir attributes are lstat ones: directory symlinks are not followed
            if is_dir(entry):
                rmtree(sftp, child)
            else:
                sftp.remove(child)
        except FileNotFoundError:
            pass
    with contextlib.suppress(FileNotFoundError):
        sftp.rmdir(path)
