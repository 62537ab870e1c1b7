"""Settings read from the environment."""

from __future__ import annotations

import os

from .errors import invalid

ENV_SSH_CONFIG = "AIE_SSH_CONFIG"
ENV_PARALLEL = "AIE_SFTP_PARALLEL"
DEFAULT_SSH_CONFIG = "~/.ssh/config"
DEFAULT_PARALLEL = 4
_MAX_PARALLEL = 64

# How long a reconnection keeps trying while the server restarts (refuses connections, or
# closes them before its banner). A first connection fails at once: that is a setting to fix.
RECONNECT_WINDOW = float(os.environ.get("AIE_SFTP_RECONNECT_SECONDS", "60"))


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
