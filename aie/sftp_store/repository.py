"""The MLflow artifact repository for ``sftp://`` URIs."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import posixpath
import stat
import threading
import urllib.parse
from collections.abc import Callable
from typing import NoReturn, TypeVar

from mlflow.entities import FileInfo
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from .errors import invalid
from .pool import Connection, pool_for
from .settings import parallelism
from .target import resolve_target
from .transfer import (
    STALE_UPLOAD_SECONDS,
    TEMP_PREFIX,
    UploadStopped,
    download_file,
    is_dir,
    makedirs,
    naming,
    rmtree,
    sweep_stale_uploads,
    temp_path_for,
    upload_file,
)

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# How often the thread waiting for parallel uploads wakes up (see log_artifacts).
_WAKE_UP_SECONDS = 0.2


def _local_tree(local_root: str, remote_root: str) -> tuple[list[str], list[tuple[int, str, str]]]:
    """The remote directories and (size, local path, remote path) of the files to upload.

    Symlinked folders are followed, like the files symlinks point to; a folder that
    leads back to one of its own ancestors (a symlink loop) is skipped with a warning.
    """
    directories = [remote_root]
    files: list[tuple[int, str, str]] = []

    def raise_error(error: OSError) -> NoReturn:
        raise error

    def identity(path: str) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    # The (device, inode) of each walked folder and of its ancestors.
    ancestry = {local_root: frozenset({identity(local_root)})}
    for current, dirnames, filenames in os.walk(local_root, onerror=raise_error, followlinks=True):
        ancestors = ancestry.pop(current)
        kept = []
        for name in dirnames:
            path = os.path.join(current, name)
            key = identity(path)
            if key in ancestors:
                _logger.warning(
                    "Not uploading %s: a symlink loop (it leads back to %s)", path, os.path.realpath(path)
                )
                continue
            ancestry[path] = ancestors | {key}
            kept.append(name)
        dirnames[:] = kept  # os.walk descends only into these

        relative = os.path.relpath(current, local_root)
        remote_dir = remote_root if relative == os.curdir else posixpath.join(remote_root, *relative.split(os.sep))
        # Also creates empty directories, like MLflow's local store.
        directories.append(remote_dir)
        for name in filenames:
            local_path = os.path.join(current, name)
            files.append((os.path.getsize(local_path), local_path, posixpath.join(remote_dir, name)))
    return directories, files


class SFTPArtifactRepository(ArtifactRepository):
    """Stores artifacts as files in a remote directory, over SFTP (paramiko)."""

    def __init__(
        self,
        artifact_uri: str,
        tracking_uri: str | None = None,
        registry_uri: str | None = None,
    ) -> None:
        parsed = urllib.parse.urlparse(artifact_uri)
        if parsed.scheme != "sftp":
            raise invalid(f"Not an sftp:// URI: {artifact_uri}")
        if parsed.password is not None:
            raise invalid(
                "Passwords in sftp:// URIs are not supported; use key authentication (IdentityFile in the SSH config)"
            )
        if not parsed.hostname:
            raise invalid(f"No host in artifact URI {artifact_uri}")
        if not parsed.path.startswith("/"):
            raise invalid(
                f"Artifact URI {artifact_uri} needs an absolute remote path: sftp://[user@]host[:port]/absolute/path"
            )
        try:
            port = parsed.port
        except ValueError as exc:
            raise invalid(f"Invalid port in artifact URI {artifact_uri}: {exc}") from None
        username = urllib.parse.unquote(parsed.username) if parsed.username else None

        self.path = posixpath.normpath(parsed.path)
        self.target = resolve_target(parsed.hostname, username, port)
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

    def _attempt(self, conn: Connection, operation: Callable[[Connection], _T]) -> _T:
        """Run ``operation``; keep ``conn`` pooled only if it is still healthy after."""
        try:
            result = operation(conn)
        except Exception:
            if conn.responsive():
                self._pool.release(conn)
            else:
                self._pool.discard(conn)
            raise
        except BaseException:  # interrupted mid-request: the session state is unknown
            self._pool.discard(conn)
            raise
        self._pool.release(conn)
        return result

    def _with_connection(self, operation: Callable[[Connection], _T]) -> _T:
        """Run ``operation`` on a pooled connection; if that died, reconnect once."""
        conn = self._pool.acquire()
        try:
            return self._attempt(conn, operation)
        except Exception as exc:
            if conn.is_active():  # the connection is fine: a genuine error
                raise
            _logger.warning(
                "SFTP connection to %s was lost (%s: %s); reconnecting, retrying once",
                self.target.describe(),
                type(exc).__name__,
                exc,
            )
        return self._attempt(self._pool.acquire_new(), operation)

    # -- ArtifactRepository API

    def log_artifact(self, local_file: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        local = os.fspath(local_file)
        directory = self._remote(self._relative(artifact_path))
        remote = posixpath.join(directory, os.path.basename(local))

        self._upload(local, remote, make_directory=True)

    def log_artifacts(self, local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        local_root = os.fspath(local_dir)
        remote_root = self._remote(self._relative(artifact_path))
        directories, files = _local_tree(local_root, remote_root)

        def make_directories(conn: Connection) -> None:
            known: set[str] = set()
            for directory in sorted(set(directories)):
                makedirs(conn.sftp, directory, known)

        self._with_connection(make_directories)

        # Largest first, so that the workers finish at about the same time.
        files.sort(key=lambda item: item[0], reverse=True)
        workers = min(parallelism(), len(files))
        if workers <= 1:
            for _size, local_path, remote_path in files:
                self._upload(local_path, remote_path)
            return
        stop = threading.Event()
        go = threading.Event()

        def upload(local_path: str, remote_path: str) -> None:
            go.wait()
            if stop.is_set():
                raise UploadStopped(f"Upload of {local_path} to {remote_path} not started")
            self._upload(local_path, remote_path, stop)

        executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aie-sftp-upload")
        try:
            # Nothing starts before everything is queued: a Ctrl-C while the executor
            # starts a worker thread can leave that thread out of its bookkeeping, and
            # shutdown() would not wait for what it does.
            futures = [executor.submit(upload, local_path, remote_path) for _size, local_path, remote_path in files]
            go.set()
            pending = set(futures)
            while pending:
                # Wake up now and then: CPython runs the handler of a Ctrl-C that arrives
                # as this thread goes to sleep on a lock only once the thread wakes up.
                done, pending = concurrent.futures.wait(
                    pending, timeout=_WAKE_UP_SECONDS, return_when=concurrent.futures.FIRST_EXCEPTION
                )
                if any(f.exception() is not None for f in done):
                    break
        finally:
            # After a failed upload, or an exception here (Ctrl-C's KeyboardInterrupt),
            # drop the queued uploads and stop the running ones at their next write.
            stop.set()
            go.set()
            executor.shutdown(wait=True, cancel_futures=True)
        failed = [f for f in futures if not f.cancelled() and f.exception() is not None]
        # The uploads stopped because of a failure come first (largest first): skip them.
        for future in sorted(failed, key=lambda f: isinstance(f.exception(), UploadStopped)):
            future.result()  # re-raises the first failure

    def _upload(
        self, local_path: str, remote_path: str, stop: threading.Event | None = None, make_directory: bool = False
    ) -> None:
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
            server_now = upload_file(conn, local_path, remote_path, temp_paths[-1], stop)
            with self._swept_lock:
                sweep = directory not in self._swept
                self._swept.add(directory)
            if sweep:
                sweep_stale_uploads(conn.sftp, directory, server_now - STALE_UPLOAD_SECONDS)

        self._with_connection(operation)

    def _is_directory(self, artifact_path: str | None) -> bool:
        remote = self._remote(self._relative(artifact_path))

        def operation(conn: Connection) -> bool:
            try:
                with naming(remote, "stat"):
                    return is_dir(conn.sftp.stat(remote))
            except FileNotFoundError:
                return False

        return self._with_connection(operation)

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

        return self._with_connection(operation)

    def _download_file(self, remote_file_path: str, local_path: str | os.PathLike[str]) -> None:
        remote = self._remote(self._relative(remote_file_path))
        local = os.fspath(local_path)
        self._with_connection(lambda conn: download_file(conn, remote, local))

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

        self._with_connection(operation)
