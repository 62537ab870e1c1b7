"""Settings read from the environment."""

from __future__ import annotations

import math
import os

from .errors import invalid

ENV_SSH_CONFIG = "AIE_SSH_CONFIG"
ENV_PARALLEL = "AIE_SFTP_PARALLEL"
ENV_RECONNECT_SECONDS = "AIE_SFTP_RECONNECT_SECONDS"
DEFAULT_SSH_CONFIG = "~/.ssh/config"
DEFAULT_PARALLEL = 4
_MAX_PARALLEL = 64

DEFAULT_RECONNECT_SECONDS = 60.0


def ssh_config_path() -> str:
    return os.path.expanduser(os.environ.get(ENV_SSH_CONFIG) or DEFAULT_SSH_CONFIG)


def parallelism() -> int:
    raw = os.environ.get(ENV_PARALLEL, "").strip()
    if not raw:
        # Each connection costs a client thread and a server process, and paramiko is
        # CPU-bound: on a 2-CPU machine 4 connections measured ~25 % slower than 2.
        return max(1, min(DEFAULT_PARALLEL, os.cpu_count() or 1))
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"{ENV_PARALLEL} must be an integer, got {raw!r}") from None
    return max(1, min(value, _MAX_PARALLEL))


def reconnect_window() -> float:
    """Seconds a reconnection keeps trying while the server restarts (``$AIE_SFTP_RECONNECT_SECONDS``).

    Read when connecting, not at import: MLflow imports every artifact store's entry
    point, so an error at import would break ``import mlflow`` for all stores.
    """
    raw = os.environ.get(ENV_RECONNECT_SECONDS, "").strip()
    if not raw:
        return DEFAULT_RECONNECT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise invalid(f"{ENV_RECONNECT_SECONDS} must be a number of seconds (0 or more), got {raw!r}")
    return value
