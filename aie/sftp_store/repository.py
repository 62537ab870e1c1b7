"""The MLflow artifact repository for ``sftp://`` URIs."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import posixpath
import stat
import threading
from collections.abc import AsyncIterable, Callable
from typing import BinaryIO, cast

from mlflow.entities import FileInfo
from mlflow.store.artifact.artifact_repo import ArtifactRepository

try:
    from mlflow.store.artifact.artifact_repo import StreamUploadMixin
except ImportError:  # an MLflow without streaming uploads: it never calls the methods below

    class StreamUploadMixin:  # type: ignore[no-redef]
        pass


from .connection import Connection
from .errors import invalid
from .pool import pool_for
from .settings import parallelism
from .target import target_for_uri
from .transfer import (
    STALE_UPLOAD_SECONDS,
    TEMP_PREFIX,
    Readable,
    download_file,
    is_dir,
    makedirs,
    naming,
    rmtree,
    sweep_stale_uploads,
    temp_path_for,
    upload_file,
    upload_stream,
)
from .uploads import ChunkPipe, local_tree, upload_in_parallel

_logger = logging.getLogger(__name__)


class SFTPArtifactRepository(ArtifactRepository, StreamUploadMixin):
    """Stores artifacts as files in a remote directory, over SFTP (paramiko)."""

    def __init__(
        self,
        artifact_uri: str,
        tracking_uri: str | None = None,
        registry_uri: str | None = None,
    ) -> None:
        self.target, self.path = target_for_uri(artifact_uri)
        self._pool = pool_for(self.target)
        # Folders already swept of stale temporary files by this repository.
        self._swept: set[str] = set()
        self._swept_lock = threading.Lock()
        super().__init__(artifact_uri, tracking_uri, registry_uri)

    @property
    def max_workers(self) -> int:
        # Also bounds MLflow's download thread pool, i.e. the connections it opens.
        return parallelism()

    # -- helpers

    def _relative(self, artifact_path: str | os.PathLike[str] | None) -> str:
        """Normalised path relative to the repository root ("" for the root itself)."""
        if artifact_path is None:
            return ""
        path = os.fspath(artifact_path)
        if not path:
            return ""
        # The server ends a path at a NUL byte ("..\x00" would be the root's parent), and
        # other control characters are no file name anyone means.
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            raise invalid(f"Invalid artifact path {path!r}: it contains a control character")
        normalized = posixpath.normpath(path)
        if path.startswith("/") or normalized == ".." or normalized.startswith("../"):
            raise invalid(f"Invalid artifact path {path!r}: it must stay inside the artifact root")
        return "" if normalized == "." else normalized

    def _remote(self, relative: str) -> str:
        return posixpath.join(self.path, relative) if relative else self.path

    # -- ArtifactRepository API

    def log_artifact(self, local_file: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        local = os.fspath(local_file)
        directory = self._remote(self._relative(artifact_path))
        remote = posixpath.join(directory, os.path.basename(local))

        self._upload(local, remote, make_directory=True)

    def log_artifacts(self, local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        local_root = os.fspath(local_dir)
        remote_root = self._remote(self._relative(artifact_path))
        directories, files = local_tree(local_root, remote_root)

        def make_directories(conn: Connection) -> None:
            known: set[str] = set()
            for directory in sorted(set(directories)):
                makedirs(conn.sftp, directory, known)

        self._pool.run(make_directories)

        # Largest first, so that the workers finish at about the same time.
        files.sort(key=lambda item: item[0], reverse=True)
        upload_in_parallel(self._upload, [(local, remote) for _size, local, remote in files], parallelism())

    def _upload(
        self, local_path: str, remote_path: str, stop: threading.Event | None = None, make_directory: bool = False
    ) -> None:
        self._put(
            remote_path, lambda conn, temp: upload_file(conn, local_path, remote_path, temp, stop), make_directory
        )

    def _put(self, remote_path: str, send: Callable[[Connection, str], float], make_directory: bool) -> None:
        """Upload with ``send(conn, temporary path)``, reconnecting once if the connection dies."""
        directory = posixpath.dirname(remote_path)
        temp_paths: list[str] = []

        def operation(conn: Connection) -> None:
            # A connection that died mid-upload could not remove its temporary file:
            # the retry, on a new connection, does.
            for abandoned in temp_paths:
                with contextlib.suppress(OSError):
                    conn.sftp.remove(abandoned)
            temp_paths.append(temp_path_for(remote_path))
            if make_directory:
                makedirs(conn.sftp, directory, set())
            server_now = send(conn, temp_paths[-1])
            with self._swept_lock:
                sweep = directory not in self._swept
                self._swept.add(directory)
            if sweep:
                sweep_stale_uploads(conn.sftp, directory, server_now - STALE_UPLOAD_SECONDS)

        self._pool.run(operation)

    # -- StreamUploadMixin API (``mlflow server --serve-artifacts`` proxying uploads)

    def log_artifact_from_stream(
        self, stream: Readable, artifact_file_name: str, artifact_path: str | None = None
    ) -> None:
        """Upload what ``stream`` reads as ``artifact_file_name``, without a local copy."""
        remote = posixpath.join(self._remote(self._relative(artifact_path)), _file_name(artifact_file_name))
        start = _position(stream)
        attempts = 0

        def send(conn: Connection, temp_path: str) -> float:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # the connection died mid-upload
                if start is None:
                    raise OSError(
                        errno.EIO,
                        f"The connection to {self.target.describe()} was lost during the upload, "
                        "and the stream cannot be read again",
                        remote,
                    )
                cast(BinaryIO, stream).seek(start)
            return upload_stream(conn, stream, remote, temp_path)

        self._put(remote, send, make_directory=True)

    async def log_artifact_from_async_stream(
        self, chunks: AsyncIterable[bytes], artifact_file_name: str, artifact_path: str | None = None
    ) -> None:
        """Upload the chunks as ``artifact_file_name``: they are handed to a thread that sends them."""
        pipe = ChunkPipe()

        def upload() -> None:
            try:
                self.log_artifact_from_stream(pipe, artifact_file_name, artifact_path)
            finally:
                pipe.close_reader()

        uploading = asyncio.ensure_future(asyncio.to_thread(upload))
        try:
            async for chunk in chunks:
                # Hand over without a thread switch while the pipe has room.
                delivered = pipe.put(chunk) if pipe.has_room() else await asyncio.to_thread(pipe.put, chunk)
                if not delivered:  # the upload ended early: its error is raised below
                    break
        except BaseException:
            pipe.fail()  # the upload stops and removes its temporary file
            with contextlib.suppress(BaseException):
                await uploading
            raise
        pipe.end()
        await uploading

    def _is_directory(self, artifact_path: str | None) -> bool:
        remote = self._remote(self._relative(artifact_path))

        def operation(conn: Connection) -> bool:
            try:
                with naming(remote, "stat"):
                    return is_dir(conn.sftp.stat(remote))
            except FileNotFoundError:
                return False

        return self._pool.run(operation)

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        relative = self._relative(path)
        remote = self._remote(relative)

        def operation(conn: Connection) -> list[FileInfo]:
            sftp = conn.sftp
            try:
                with naming(remote, "list"):
                    if not is_dir(sftp.stat(remote)):
                        return []
                    entries = sftp.listdir_attr(remote)
            except FileNotFoundError:
                return []
            infos = []
            for entry in entries:
                name = entry.filename
                if name in (".", "..") or name.startswith(TEMP_PREFIX):
                    continue
                attrs = entry
                if stat.S_ISLNK(entry.st_mode or 0):
                    target = posixpath.join(remote, name)
                    try:
                        with naming(target, "stat"):
                            attrs = sftp.stat(target)
                    except FileNotFoundError:  # dangling symlink
                        continue
                child = posixpath.join(relative, name) if relative else name
                if is_dir(attrs):
                    infos.append(FileInfo(child, True, None))
                else:
                    infos.append(FileInfo(child, False, attrs.st_size))
            return sorted(infos, key=lambda info: str(info.path))

        return self._pool.run(operation)

    def _download_file(self, remote_file_path: str, local_path: str | os.PathLike[str]) -> None:
        remote = self._remote(self._relative(remote_file_path))
        local = os.fspath(local_path)
        self._pool.run(lambda conn: download_file(conn, remote, local))

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        remote = self._remote(self._relative(artifact_path))

        def operation(conn: Connection) -> None:
            sftp = conn.sftp
            try:
                with naming(remote, "lstat"):
                    attrs = sftp.lstat(remote)
            except FileNotFoundError:
                return
            if is_dir(attrs):
                rmtree(sftp, remote)
            else:
                with naming(remote, "remove"):
                    sftp.remove(remote)

        self._pool.run(operation)


def _file_name(name: str) -> str:
    """The last component of ``name`` (MLflow: directory components are ignored), checked."""
    base = posixpath.basename(name)
    if base in ("", ".", ".."):
        raise invalid(f"Invalid artifact file name {name!r}: it names no file")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in base):
        raise invalid(f"Invalid artifact file name {name!r}: it contains a control character")
    return base


def _position(stream: Readable) -> int | None:
    """Where a seekable stream is (to send it again after a reconnection), else None."""
    try:
        seekable = getattr(stream, "seekable", None)
        if callable(seekable) and seekable():
            return int(cast(BinaryIO, stream).tell())
    except (OSError, ValueError):
        pass
    return None
