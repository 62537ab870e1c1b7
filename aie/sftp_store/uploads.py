"""Uploading a local folder: walking it, and running its uploads in parallel."""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import posixpath
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from .transfer import UploadStopped

_logger = logging.getLogger(__name__)

# How often the thread waiting for parallel uploads wakes up (see upload_in_parallel).
_WAKE_UP_SECONDS = 0.2


def local_tree(local_root: str, remote_root: str) -> tuple[list[str], list[tuple[int, str, str]]]:
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
                _logger.warning("Not uploading %s: a symlink loop (it leads back to %s)", path, os.path.realpath(path))
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


def upload_in_parallel(
    upload: Callable[[str, str, threading.Event], None], files: Sequence[tuple[str, str]], workers: int
) -> None:
    """Call ``upload(local, remote, stop)`` for each file, over ``workers`` threads.

    At the first failure, or on an exception in the calling thread (Ctrl-C's
    KeyboardInterrupt), the queued uploads are dropped and ``stop`` is set, which the
    running ones check before each write. The first failure is raised.
    """
    stop = threading.Event()
    if min(workers, len(files)) <= 1:
        for local_path, remote_path in files:
            upload(local_path, remote_path, stop)
        return
    go = threading.Event()

    def start(local_path: str, remote_path: str) -> None:
        go.wait()
        if stop.is_set():
            raise UploadStopped(f"Upload of {local_path} to {remote_path} not started")
        upload(local_path, remote_path, stop)

    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=min(workers, len(files)), thread_name_prefix="aie-sftp-upload"
    )
    try:
        # Nothing starts before everything is queued: a Ctrl-C while the executor
        # starts a worker thread can leave that thread out of its bookkeeping, and
        # shutdown() would not wait for what it does.
        futures = [executor.submit(start, local_path, remote_path) for local_path, remote_path in files]
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
        stop.set()
        go.set()
        executor.shutdown(wait=True, cancel_futures=True)
    failed = [f for f in futures if not f.cancelled() and f.exception() is not None]
    # The uploads stopped because of a failure come first (largest first): skip them.
    for future in sorted(failed, key=lambda f: isinstance(f.exception(), UploadStopped)):
        future.result()  # re-raises the first failure


class ChunkPipe:
    """Chunks handed from an event loop to the thread that uploads them.

    At most ``limit`` bytes wait in it; :meth:`put` blocks past that. :meth:`read`
    (the upload's side) blocks until data, the end, or a failure arrives.
    """

    def __init__(self, limit: int = 8 * 1024 * 1024) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._limit = limit
        self._changed = threading.Condition()
        self._ended = False
        self._failed = False
        self._reader_gone = False

    def has_room(self) -> bool:
        with self._changed:
            return self._buffered < self._limit or self._reader_gone

    def put(self, chunk: bytes) -> bool:
        """Queue ``chunk``; False if the reader is gone (the upload ended)."""
        with self._changed:
            while self._buffered >= self._limit and not self._reader_gone:
                self._changed.wait()
            if self._reader_gone:
                return False
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            self._changed.notify_all()
            return True

    def end(self) -> None:
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def fail(self) -> None:
        with self._changed:
            self._failed = True
            self._changed.notify_all()

    def close_reader(self) -> None:
        with self._changed:
            self._reader_gone = True
            self._changed.notify_all()

    def read(self, size: int = -1, /) -> bytes:
        with self._changed:
            while not self._chunks and not self._ended and not self._failed:
                self._changed.wait()
            if self._failed:
                raise UploadStopped("The stream being uploaded failed")
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            if 0 <= size < len(chunk):
                self._chunks.appendleft(chunk[size:])
                chunk = chunk[:size]
            self._buffered -= len(chunk)
            self._changed.notify_all()
            return chunk
