"""Shared helpers: the project folder, running the CLI and ansible-playbook, Docker probes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(args: Sequence[str], timeout: float = 1800, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command from the project folder and capture its output."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        list(args), cwd=PROJECT, capture_output=True, text=True, timeout=timeout, env=env, check=False, **kwargs
    )


def aie(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "aie.cli", *args], timeout=timeout)


def ansible_playbook(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "ansible-playbook"), *args], timeout=timeout)


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return run(["docker", "info", "--format", "{{json .ServerVersion}}"], timeout=60).returncode == 0


def containers(prefix: str) -> list[str]:
    """Names of the containers, running or not, whose name starts with prefix-."""
    if not docker_answers():
        return []
    out = run(["docker", "ps", "-a", "--format", "{{.Names}}"], timeout=60).stdout.split()
    return [name for name in out if name.startswith(f"{prefix}-")]


def write_vars(path: Path, values: dict[str, object]) -> str:
    path.write_text(json.dumps(values))
    return f"@{path}"


@pytest.fixture(scope="session")
def project() -> Path:
    return PROJECT
