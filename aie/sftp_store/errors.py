"""The store's exceptions."""

from __future__ import annotations

import paramiko
from mlflow.exceptions import MlflowException


class SFTPHostKeyError(paramiko.SSHException):
    """The server's host key is not in known_hosts, or differs from the recorded one."""


class SFTPAuthenticationError(paramiko.AuthenticationException):
    """The server refused our key (or no usable key was found)."""


class SFTPConnectionDropped(paramiko.SSHException):
    """The server closed the connection before its SSH banner (sshd past MaxStartups, or restarting)."""


class SSHConfigWarning(UserWarning):
    """The SSH client config uses something this store cannot follow (Include, ProxyJump)."""


def invalid(message: str) -> MlflowException:
    """A bad URI, artifact path or setting (MLflow's INVALID_PARAMETER_VALUE)."""
    exc: MlflowException = MlflowException.invalid_parameter_value(message)
    return exc
