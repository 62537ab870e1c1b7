"""scripts/bootstrap: what `make up` installs, and a virtualenv broken by an interrupted run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import PROJECT

pytestmark = pytest.mark.slow


def bootstrap(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROJECT / "scripts" / "bootstrap"), *args], cwd=PROJECT, capture_output=True,
                          text=True, timeout=900, check=False, env={"VENV": str(venv), "PATH": "/usr/bin:/bin"})


def test_a_broken_virtualenv_is_made_again_with_only_what_deploying_needs(tmp_path: Path) -> None:
    # What an interrupted bootstrap leaves: a virtualenv without pip.
    venv = tmp_path / "venv"
    made = subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert made.returncode == 0, made.stderr
    repaired = bootstrap(venv, "deploy")
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert "no working pip" in repaired.stdout
    assert (venv / "bin" / "aie").is_file() and (venv / "bin" / "ansible-playbook").is_file()
    # Only what deploying needs: no test runner, no MLflow.
    assert not (venv / "bin" / "pytest").exists() and not (venv / "bin" / "mlflow").exists()
    answered = subprocess.run([str(venv / "bin" / "aie"), "--help"], capture_output=True, text=True, check=False)
    assert answered.returncode == 0 and "usage: aie" in answered.stdout
    # On the local inventory the modules run with this virtualenv's Python: each collection's
    # libraries (requests for community.docker, boto3 for amazon.aws) must be in it. Whether the
    # Docker engine or an S3 server answers does not matter here, only that the module starts.
    for module, args in (("community.docker.docker_host_info", ""),
                         ("amazon.aws.s3_bucket_info", "endpoint_url=http://127.0.0.1:9 access_key=a secret_key=b")):
        ran = subprocess.run(
            [str(venv / "bin" / "ansible"), "localhost", "-c", "local", "-m", module, "-a", args,
             "-e", f"ansible_python_interpreter={venv / 'bin' / 'python'}"],
            capture_output=True, text=True, timeout=300, check=False, cwd=PROJECT, env={"PATH": "/usr/bin:/bin"})
        assert "Failed to import" not in ran.stdout + ran.stderr, (module, ran.stdout[-1500:])
        assert "localhost |" in ran.stdout, (module, ran.stdout[-1500:], ran.stderr[-1500:])
    nothing_to_do = bootstrap(venv, "deploy")
    assert nothing_to_do.returncode == 0 and nothing_to_do.stdout == ""


def test_an_unknown_purpose_is_named(tmp_path: Path) -> None:
    refused = bootstrap(tmp_path / "venv", "everything")
    assert refused.returncode == 2
    assert refused.stderr.strip() == "bootstrap: unknown purpose 'everything' (deploy or test)"
    assert not (tmp_path / "venv").exists()
