"""scripts/bootstrap: what `make up` installs, a virtualenv broken by an interrupted run, and a
Python too old for aie (Apple's /usr/bin/python3 is 3.9)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT

ADVICE = ("aie needs Python 3.11 or newer: install it (macOS: brew install python@3.12, or python.org)"
          " and run again with PYTHON=/path/to/python3.12 make ")


def bootstrap(venv: Path, *args: str, python: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"VENV": str(venv), "PATH": "/usr/bin:/bin"} | ({"PYTHON": python} if python else {})
    return subprocess.run([str(PROJECT / "scripts" / "bootstrap"), *args], cwd=PROJECT, capture_output=True,
                          text=True, timeout=900, check=False, env=env)


def base_python() -> str:
    """The interpreter the tests' virtualenv was made with: one aie runs on, wherever it is."""
    return str(Path(getattr(sys, "_base_executable", "") or sys.executable).resolve())


def fake_python(folder: Path, version: str) -> Path:
    """A shell script that answers bootstrap as Python `version` would, and makes virtualenvs of
    itself. pip does nothing but note what it was asked in pip.log beside the script."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "python3"
    path.write_text(f"""#!/bin/sh
case "$1 $2" in
    "-c "*version_info*) echo {version} ;;
    "-c "*) ;;
    "-m venv") mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
    "-m pip") echo "$*" >>"$(dirname "$0")/pip.log" ;;
    *) exit 1 ;;
esac
""")
    path.chmod(0o755)
    return path


def test_a_python_older_than_3_11_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    old = fake_python(tmp_path / "apple", "3.9.6")
    refused = bootstrap(tmp_path / "venv", "deploy", python=str(old))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr == f"bootstrap: {old} is Python 3.9.6; {ADVICE}up\n"
    assert refused.stdout == ""
    assert not (tmp_path / "venv").exists() and not (tmp_path / "apple" / "pip.log").exists()


@pytest.mark.parametrize(("purpose", "target"), [("deploy", "up"), ("test", "test")])
def test_a_missing_python_is_named(tmp_path: Path, purpose: str, target: str) -> None:
    refused = bootstrap(tmp_path / "venv", purpose, python="/nonexistent")
    assert refused.returncode == 2
    assert refused.stderr == f"bootstrap: /nonexistent not found; {ADVICE}{target}\n"
    assert not (tmp_path / "venv").exists()


def test_a_virtualenv_made_with_an_older_python_is_made_again(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([str(fake_python(tmp_path / "apple", "3.9.6")), "-m", "venv", str(venv)], check=True)
    # While PYTHON is still too old it is refused, and the virtualenv is left as it was.
    refused = bootstrap(venv, "deploy", python=str(tmp_path / "apple" / "python3"))
    assert refused.returncode == 2 and "is Python 3.9.6; aie needs Python 3.11" in refused.stderr
    assert (venv / "bin" / "python").read_text() == (tmp_path / "apple" / "python3").read_text()
    # With a newer one, the virtualenv is made again with it and aie installed there.
    new = fake_python(tmp_path / "brew", "3.12.8")
    remade = bootstrap(venv, "deploy", python=str(new))
    assert remade.returncode == 0, remade.stderr
    assert f"bootstrap: {venv} was made with Python 3.9.6, older than aie needs: making it again" in remade.stdout
    answer = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.version_info)"],
                            capture_output=True, text=True, check=True)
    assert answer.stdout == "3.12.8\n"
    assert "install -q -e .[deploy]" in (venv / "bin" / "pip.log").read_text()
    # A virtualenv that is fine is used whatever PYTHON names: nothing to do, nothing said.
    kept = bootstrap(venv, "deploy", python=str(tmp_path / "apple" / "python3"))
    assert (kept.returncode, kept.stdout, kept.stderr) == (0, "", "")


@pytest.mark.slow
def test_a_broken_virtualenv_is_made_again_with_only_what_deploying_needs(tmp_path: Path) -> None:
    # What an interrupted bootstrap leaves: a virtualenv without pip.
    venv = tmp_path / "venv"
    made = subprocess.run([base_python(), "-m", "venv", "--without-pip", str(venv)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert made.returncode == 0, made.stderr
    repaired = bootstrap(venv, "deploy", python=base_python())
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
    nothing_to_do = bootstrap(venv, "deploy", python=base_python())
    assert nothing_to_do.returncode == 0 and nothing_to_do.stdout == ""


def test_an_unknown_purpose_is_named(tmp_path: Path) -> None:
    refused = bootstrap(tmp_path / "venv", "everything")
    assert refused.returncode == 2
    assert refused.stderr.strip() == "bootstrap: unknown purpose 'everything' (deploy or test)"
    assert not (tmp_path / "venv").exists()
