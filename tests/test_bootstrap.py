"""scripts/bootstrap: what `make up` installs, and a virtualenv broken by an interrupted run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PROJECT

pytestmark = pytest.mark.slow


def bootstrap(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROJECT / "scripts" / "bootstrap"), *args], cwd=PROJECT, capture_output=True,
                          text=True, timeout=900, check=False, env={"VENV": str(venv), "PATH": "/usr/bin:/bin"})


def test_deploying_needs_no_test_tools_and_a_broken_virtualenv_is_made_again(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    first = bootstrap(venv, "deploy")
    assert first.returncode == 0, first.stderr[-2000:]
    assert (venv / "bin" / "aie").is_file() and (venv / "bin" / "ansible-playbook").is_file()
    # Only what deploying needs: no test runner, no MLflow.
    assert not (venv / "bin" / "pytest").exists() and not (venv / "bin" / "mlflow").exists()
    # An interrupted bootstrap: the virtualenv is there, its pip is not.
    for pip in venv.glob("lib/python3*/site-packages/pip"):
        shutil.rmtree(pip)
    again = bootstrap(venv, "deploy")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "no working pip" in again.stdout
    answered = subprocess.run([str(venv / "bin" / "aie"), "--help"], capture_output=True, text=True, check=False)
    assert answered.returncode == 0 and "usage: aie" in answered.stdout
    nothing_to_do = bootstrap(venv, "deploy")
    assert nothing_to_do.returncode == 0 and nothing_to_do.stdout == ""


def test_an_unknown_purpose_is_named(tmp_path: Path) -> None:
    refused = bootstrap(tmp_path / "venv", "everything")
    assert refused.returncode == 2
    assert refused.stderr.strip() == "bootstrap: unknown purpose 'everything' (deploy or test)"
    assert not (tmp_path / "venv").exists()
