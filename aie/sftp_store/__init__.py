"""MLflow artifact repository for ``sftp://`` URIs, written directly on paramiko.

Why this exists instead of MLflow's built-in ``sftp://`` store:

* MLflow's store is built on pysftp, which is unmaintained (last release 0.2.9,
  2016) and breaks with paramiko >= 4: ``pysftp/__init__.py`` does
  ``from paramiko import AgentKey, RSAKey, DSSKey`` and paramiko 4 removed
  ``DSSKey``, so ``import pysftp`` itself fails, and with it every ``sftp://``
  artifact operation.
* The built-in store opens ``max_workers`` (up to 20) pysftp connections in the
  repository's constructor and keeps them for the life of the object (MLflow
  caches repositories per run). Once the SFTP server restarts, every cached
  connection is dead, and every later artifact call on that repository fails
  until the client process is restarted.
* It also reads only ``~/.ssh/config`` and uploads a directory tree file by file
  over a single connection.

This package replaces it. It is registered through the ``mlflow.artifact_repository``
entry point (``sftp=aie.sftp_store:SFTPArtifactRepository``); MLflow registers entry
points after its built-in stores, so this class serves ``sftp://`` URIs.

Behaviour:

* ``$AIE_SFTP_ALLOWED_HOSTS`` (comma-separated ``host`` or ``host:port``, as URIs write them),
  when set, lists the only hosts a URI may name: others are refused before any connection (the
  MLflow server's, which reads locations that clients gave).
* URI ``sftp://[user@]host[:port]/absolute/path``. ``host`` may be a ``Host`` alias
  of the SSH client config (``$AIE_SSH_CONFIG``, default ``~/.ssh/config``), whose
  ``HostName``, ``User``, ``Port``, ``IdentityFile`` and
  ``UserKnownHostsFile`` / ``GlobalKnownHostsFile`` are honoured. User and port
  written in the URI win over the config. ``Include``, ``ProxyJump`` and
  ``ProxyCommand`` are not followed; an :class:`SSHConfigWarning` says so.
* Host keys are always verified against known_hosts; unknown and mismatching keys
  are refused (:class:`SFTPHostKeyError`). There is no trust on first use.
* Authentication is by key only: the configured ``IdentityFile`` entries in order
  (missing ones skipped, as OpenSSH does), or paramiko's default key files when none
  is configured. No agent, no passwords. Without a usable key, or when the server
  refuses them, :class:`SFTPAuthenticationError` names the keys tried.
* Connections are pooled per target and shared by all repositories of the process,
  which uses at most ``$AIE_SFTP_PARALLEL`` of them at once (more callers wait).
  A first connection that is refused, to an unknown host, or whose authentication
  fails is reported at once; one that sshd drops before its banner (past its
  ``MaxStartups``, as a burst of clients can be) is tried again a few times.
  An operation that fails because its connection died (server restarted) is retried
  once on a new connection. Once a server has been reached, reconnecting keeps trying
  for ``$AIE_SFTP_RECONNECT_SECONDS`` seconds (default 60) while it restarts; a bad
  value is reported when connecting, naming the variable.
* ``log_artifacts`` uploads over ``$AIE_SFTP_PARALLEL`` connections in parallel
  (default 4, but no more than the number of CPUs). Uploads are pipelined, use the
  largest write size the server advertises (``limits@openssh.com``), prefer AES-GCM
  (the cheapest cipher for both ends on CPUs with AES instructions), and are written
  under a hidden temporary name that is renamed into place when complete, so readers
  never see partial artifacts. A temporary file left by a connection that died is
  removed once reconnected; ones untouched for two hours (left by a client that died)
  are swept from each folder a repository writes to. Uploads that ``mlflow server
  --serve-artifacts`` proxies are streamed (MLflow's ``StreamUploadMixin``) without
  a local temporary file. Symlinked folders are followed; a symlink loop is
  skipped with a warning.

Layout: ``target`` resolves the URI's host through the SSH client config,
``connection`` opens one SSH connection with its SFTP session, ``pool`` shares them
within the process and runs operations on them (reconnecting once), ``transfer``
holds the SFTP operations on one connection, ``uploads`` walks a local folder and
runs its uploads in parallel, ``repository`` is the MLflow artifact repository;
``settings`` reads the environment and ``errors`` defines the exceptions.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .repository import SFTPArtifactRepository


def _create_repository(
    artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
) -> SFTPArtifactRepository:
    """Stands in for the class while this package is half-imported (see below)."""
    return SFTPArtifactRepository(artifact_uri, tracking_uri, registry_uri)


if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        # When this package is imported before mlflow, the first mlflow import below
        # runs mlflow/__init__, which loads the ``mlflow.artifact_repository`` entry
        # points, i.e. resolves ``aie.sftp_store:SFTPArtifactRepository`` while this
        # package is only half-initialised. Without this, MLflow would warn and keep
        # its pysftp store. _claim_placeholder_registration() swaps in the class.
        if name == "SFTPArtifactRepository":
            return _create_repository
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Imported after the definitions above on purpose (they import mlflow); see __getattr__.
from .errors import SFTPAuthenticationError, SFTPConnectionDropped, SFTPHostKeyError, SSHConfigWarning  # noqa: E402
from .pool import close_connections  # noqa: E402
from .repository import SFTPArtifactRepository  # noqa: E402
from .settings import ENV_ALLOWED_HOSTS, ENV_PARALLEL, ENV_RECONNECT_SECONDS, ENV_SSH_CONFIG  # noqa: E402
from .target import SSHTarget, resolve_target  # noqa: E402

__all__ = [
    "ENV_ALLOWED_HOSTS",
    "ENV_PARALLEL",
    "ENV_RECONNECT_SECONDS",
    "ENV_SSH_CONFIG",
    "SFTPArtifactRepository",
    "SFTPAuthenticationError",
    "SFTPConnectionDropped",
    "SFTPHostKeyError",
    "SSHConfigWarning",
    "SSHTarget",
    "close_connections",
    "resolve_target",
]


def _claim_placeholder_registration() -> None:
    """Register the class itself where MLflow registered ``_create_repository``."""
    module = sys.modules.get("mlflow.store.artifact.artifact_repository_registry")
    # During MLflow's own entry-point loading the registry module is half-imported,
    # but its registry object already exists (and holds MLflow's built-in store).
    registry = getattr(module, "_artifact_repository_registry", None)
    if registry is None:
        return
    registered: object = registry.get_registered_artifact_repositories().get("sftp")
    if registered is _create_repository:
        registry.register("sftp", SFTPArtifactRepository)


_claim_placeholder_registration()
