"""Resolving the SSH target of an ``sftp://`` URI from the URI and the SSH client config."""

from __future__ import annotations

import getpass
import os
import posixpath
import shlex
import urllib.parse
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

import paramiko

from .errors import SSHConfigWarning, invalid
from .settings import ENV_ALLOWED_HOSTS, allowed_hosts, ssh_config_path

_DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts",)
_DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts",)


@dataclass(frozen=True)
class SSHTarget:
    """Everything needed to open an SSH connection; also the connection pool's key."""

    alias: str
    hostname: str
    port: int
    username: str
    # Every IdentityFile configured, in order (empty: paramiko's default key files).
    identity_files: tuple[str, ...]
    known_hosts_files: tuple[str, ...]

    def describe(self) -> str:
        where = f"{self.username}@{self.hostname} port {self.port}"
        return where if self.alias == self.hostname else f"{where} (ssh config host {self.alias!r})"


def _config_files(options: Mapping[str, object], key: str, default: Iterable[str]) -> list[str]:
    value = options.get(key)
    words = shlex.split(value) if isinstance(value, str) else list(default)
    return [os.path.expanduser(w) for w in words if w.lower() != "none"]


# Options paramiko's SSHConfig parses but SSHClient does not act on (paramiko keeps an
# ``Include`` line as a plain option, so the included files are never read).
_UNSUPPORTED_OPTIONS = {
    "include": "the files it names are not read",
    "proxyjump": "the store connects to the host directly",
    "proxycommand": "the store connects to the host directly",
}


def _warn_unsupported(options: Mapping[str, object], host: str, config_path: str) -> None:
    for key, consequence in _UNSUPPORTED_OPTIONS.items():
        value = options.get(key)
        if value:
            words = " ".join(value) if isinstance(value, list) else str(value)
            name = {"include": "Include", "proxyjump": "ProxyJump", "proxycommand": "ProxyCommand"}[key]
            warnings.warn(
                f"{config_path} applies '{name} {words}' to host {host!r}, which the SFTP artifact store "
                f"does not support: {consequence}",
                SSHConfigWarning,
                stacklevel=3,
            )


def resolve_target(host: str, username: str | None = None, port: int | None = None) -> SSHTarget:
    """Combine URI parts with the SSH client config; explicit user and port win."""
    config_path = ssh_config_path()
    config = paramiko.SSHConfig.from_path(config_path) if os.path.isfile(config_path) else paramiko.SSHConfig()
    # The stubs declare str values, but "identityfile" is a list at runtime.
    options = cast(Mapping[str, object], config.lookup(host))

    hostname = options.get("hostname")
    config_port = options.get("port")
    config_user = options.get("user")
    raw_identities = options.get("identityfile")
    identities = [raw_identities] if isinstance(raw_identities, str) else raw_identities
    identity_files = [
        os.path.expanduser(str(i)) for i in (identities if isinstance(identities, list) else []) if str(i) != "none"
    ]
    _warn_unsupported(options, host, config_path)

    if port is None:
        try:
            port = int(config_port) if isinstance(config_port, str) else 22
        except ValueError:
            raise invalid(f"Invalid Port {config_port!r} for host {host!r} in {config_path}") from None
    known_hosts = _config_files(options, "userknownhostsfile", _DEFAULT_USER_KNOWN_HOSTS)
    known_hosts += _config_files(options, "globalknownhostsfile", _DEFAULT_GLOBAL_KNOWN_HOSTS)
    return SSHTarget(
        alias=host,
        hostname=hostname if isinstance(hostname, str) and hostname else host,
        port=port,
        username=username or (config_user if isinstance(config_user, str) else getpass.getuser()),
        identity_files=tuple(identity_files),
        known_hosts_files=tuple(known_hosts),
    )


def target_for_uri(artifact_uri: str) -> tuple[SSHTarget, str]:
    """The target and the normalised remote path of ``sftp://[user@]host[:port]/path``."""
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
    allowed = allowed_hosts()
    named = parsed.hostname.lower() + (f":{port}" if port is not None else "")
    if allowed is not None and named not in allowed:
        raise invalid(f"Artifact URI {artifact_uri} names host {named}, which is none of {ENV_ALLOWED_HOSTS}: "
                      f"{', '.join(sorted(allowed)) or 'none'}")
    username = urllib.parse.unquote(parsed.username) if parsed.username else None
    return resolve_target(parsed.hostname, username, port), posixpath.normpath(parsed.path)
