"""Settings read from the environment."""

from __future__ import annotations

import math
import os

from .errors import invalid

ENV_SSH_CONFIG = "AIE_SSH_CONFIG"
ENV_PARALLEL = "AIE_SFTP_PARALLEL"
ENV_RECONNECT_SECONDS = "AIE_SFTP_RECONNECT_SECONDS"
ENV_ALLOWED_HOSTS = "AIE_SFTP_ALLOWED_HOSTS"
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


def allowed_hosts() -> frozenset[str] | None:
    """The hosts (``host`` or ``host:port`` as URIs write them) URIs may name
    (``$AIE_SFTP_ALLOWED_HOSTS``, comma-separated), or None: any.

    An MLflow server connects only to the hosts of its own artifact root and destination (MLflow's
    host policy); aie's destination is the router (``aie-routed:/``), so the server allows the
    ``sftp`` scheme and this list names the SFTP servers it may reach instead.
    """
    raw = os.environ.get(ENV_ALLOWED_HOSTS)
    if raw is None:
        return None
    return frozenset(host.strip().lower() for host in raw.split(",") if host.strip())
