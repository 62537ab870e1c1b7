"""The per-process pool of connections to each target, and running operations on it."""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import paramiko

from .connection import Connection, dropped_early, open_connection
from .errors import SFTPAuthenticationError, SFTPHostKeyError
from .settings import parallelism, reconnect_window
from .target import SSHTarget

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# A first connection dropped before the session began (sshd's MaxStartups) is tried
# again this many times in all, after jittered delays from 0.1 s doubling up to 2 s.
_FIRST_CONNECT_ATTEMPTS = 8
_FIRST_RETRY_DELAY = 0.1
_FIRST_RETRY_MAX_DELAY = 2.0
# A thread waiting for a free connection wakes up this often (for Ctrl-C).
_WAKE_UP_SECONDS = 0.2


class ConnectionPool:
    """Connections to one target, shared by every repository using that target.

    At most ``$AIE_SFTP_PARALLEL`` of them (see :func:`parallelism`) are in use at
    once: a caller of :meth:`acquire` past that waits for one to be released, so a
    burst of threads opens no more connections than that.
    """

    def __init__(self, target: SSHTarget, max_idle: int) -> None:
        self.target = target
        self.max_idle = max_idle
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._in_use = 0
        self._reached = False

    def _connect(self) -> Connection:
        """A new connection; once the server has been reached, ride out its restarts."""
        window = reconnect_window()
        deadline = time.monotonic() + window
        reached = self._reached
        delay = 0.5 if reached else _FIRST_RETRY_DELAY
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = open_connection(self.target)
            except (SFTPHostKeyError, SFTPAuthenticationError):
                raise
            except (OSError, EOFError, paramiko.SSHException) as exc:
                if reached:
                    # A server that refuses connections or drops them is restarting.
                    retry = time.monotonic() + delay <= deadline
                else:
                    # Never reached: a refused connection, an unknown host or a timeout
                    # is a setting to fix, reported at once. A connection dropped before
                    # the session began is sshd shedding a burst (MaxStartups): retried.
                    retry = dropped_early(exc) and attempt < _FIRST_CONNECT_ATTEMPTS
                if not retry:
                    raise
                _logger.info("SFTP server %s not answering (%s); trying again", self.target.describe(), exc)
                # Jittered, so that the clients dropped together do not come back together.
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0 if reached else _FIRST_RETRY_MAX_DELAY)
                continue
            self._reached = True
            return conn

    def _take_slot(self) -> None:
        limit = parallelism()
        with self._slot_freed:
            while self._in_use >= limit:
                # Bounded waits: see the Ctrl-C note in SFTPArtifactRepository.log_artifacts.
                self._slot_freed.wait(_WAKE_UP_SECONDS)
            self._in_use += 1

    def _free_slot(self) -> None:
        with self._slot_freed:
            self._in_use -= 1
            self._slot_freed.notify()

    def acquire(self) -> Connection:
        """An idle connection or a new one; give it back with release() or discard()."""
        self._take_slot()
        try:
            while True:
                with self._lock:
                    if not self._idle:
                        break
                    conn = self._idle.pop()
                if conn.is_active():
                    return conn
                _logger.info("Dropping dead SFTP connection to %s", self.target.describe())
                conn.close()
            return self._connect()
        except BaseException:
            self._free_slot()
            raise

    def acquire_new(self) -> Connection:
        """A new connection (not an idle one, which may be as dead as the one just lost)."""
        self._take_slot()
        try:
            return self._connect()
        except BaseException:
            self._free_slot()
            raise

    def release(self, conn: Connection) -> None:
        """Give back a connection from acquire(); it is kept for reuse if still alive."""
        try:
            if conn.is_active():
                with self._lock:
                    if len(self._idle) < self.max_idle:
                        self._idle.append(conn)
                        return
            conn.close()
        finally:
            self._free_slot()

    def discard(self, conn: Connection) -> None:
        """Give back and close a connection from acquire() whose state is unknown."""
        try:
            conn.close()
        finally:
            self._free_slot()

    def run(self, operation: Callable[[Connection], _T]) -> _T:
        """Run ``operation`` on a pooled connection; if that died, once more on a new one."""
        conn = self.acquire()
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
        return self._attempt(self.acquire_new(), operation)

    def _attempt(self, conn: Connection, operation: Callable[[Connection], _T]) -> _T:
        """Run ``operation``; keep ``conn`` pooled only if it is still healthy after."""
        try:
            result = operation(conn)
        except Exception:
            if conn.responsive():
                self.release(conn)
            else:
                self.discard(conn)
            raise
        except BaseException:  # interrupted mid-request: the session state is unknown
            self.discard(conn)
            raise
        self.release(conn)
        return result

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def abandon_after_fork(self) -> list[Connection]:
        """In a forked child: drop the parent's connections without touching them."""
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._in_use = 0
        idle, self._idle = self._idle, []
        return idle


_pools: dict[SSHTarget, ConnectionPool] = {}
_pools_lock = threading.Lock()
# A forked child must neither use nor close (nor garbage-collect: paramiko's
# Channel.__del__ sends a close) the connections it inherited from its parent.
_inherited_after_fork: list[Connection] = []


def pool_for(target: SSHTarget) -> ConnectionPool:
    with _pools_lock:
        pool = _pools.get(target)
        if pool is None:
            pool = _pools[target] = ConnectionPool(target, max_idle=parallelism())
        return pool


def close_connections() -> None:
    """Close every idle pooled connection (they are re-opened on demand)."""
    with _pools_lock:
        pools = list(_pools.values())
    for pool in pools:
        pool.close()


def _forget_connections_after_fork() -> None:
    global _pools_lock
    _pools_lock = threading.Lock()
    for pool in _pools.values():
        _inherited_after_fork.extend(pool.abandon_after_fork())


atexit.register(close_connections)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections_after_fork)
