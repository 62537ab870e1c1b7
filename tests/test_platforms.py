"""Every image's Python requirements resolve on linux/amd64 and on linux/arm64 (Apple silicon).

Each image installs its own requirements.txt on top of its parent image's (the Dockerfile's
``BASE_IMAGE``), so a chain is resolved as a whole, with uv, for CPython 3.13 (Debian
trixie, the base image) and wheels only. uv, unlike ``pip --platform``, evaluates environment
markers (``platform_machine``) for the target platform rather than for this machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT

PYTHON_VERSION = "3.13"
PLATFORMS = ("x86_64-manylinux_2_17", "aarch64-manylinux_2_17")
ROLES = PROJECT / "roles"
PARENT = re.compile(r"^ARG BASE_IMAGE=(\S+)", re.MULTILINE)
# MLflow's release, pinned in group_vars/all/images.yml and given to the Python image's build as
# MLFLOW_VERSION, which pip expands in its requirements file (uv does not: the test does).
MLFLOW_VERSION = re.search(r'^aie_mlflow_version: "([0-9.]+)"$',
                           (PROJECT / "group_vars/all/images.yml").read_text(), re.MULTILINE)


def image_roles() -> dict[str, str]:
    """Image name -> role that builds it, from group_vars/all/images.yml (aie_<x>_image: NAME)."""
    names = re.findall(r"^aie_(\w+)_image: (\S+)$", (PROJECT / "group_vars/all/images.yml").read_text(), re.MULTILINE)
    return {image: f"{role}_image" for role, image in names if (ROLES / f"{role}_image").is_dir()}


def requirement_chain(role: str) -> list[Path]:
    """The requirements files an image of `role` installs, its ancestors' first."""
    dockerfile = (ROLES / role / "docker/Dockerfile").read_text()
    parent = PARENT.search(dockerfile)
    # The common layer and the base image install no Python requirements.
    parent_role = image_roles().get(parent.group(1)) if parent else None
    chain = requirement_chain(parent_role) if parent_role else []
    own = ROLES / role / "docker/requirements.txt"
    return chain + ([own] if own.is_file() else [])


IMAGES = sorted(p.parent.parent.name for p in ROLES.glob("*/docker/requirements.txt"))


def leaves() -> list[str]:
    """The images whose chain is no other image's prefix: resolving these covers every file."""
    chains = {role: requirement_chain(role) for role in IMAGES}
    return [
        role for role, chain in chains.items()
        if not any(other != chain and other[: len(chain)] == chain for other in chains.values())
    ]


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert found, "uv is not installed: `make test` installs it (the test extra)"
    return found


def test_every_image_with_requirements_is_checked() -> None:
    assert {"python_image", "ml_image", "jupyterlab"} <= set(IMAGES)
    assert {f for role in leaves() for f in requirement_chain(role)} == {
        ROLES / role / "docker/requirements.txt" for role in IMAGES
    }
    assert requirement_chain("jupyterlab")[-3:] == [
        ROLES / "python_image/docker/requirements.txt",
        ROLES / "ml_image/docker/requirements.txt",
        ROLES / "jupyterlab/docker/requirements.txt",
    ]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("role", leaves())
def test_requirements_resolve(role: str, platform: str, tmp_path: Path) -> None:
    assert MLFLOW_VERSION, "group_vars/all/images.yml pins no aie_mlflow_version"
    out = tmp_path / "resolved.txt"
    chain = []
    for index, path in enumerate(requirement_chain(role)):
        chain.append(tmp_path / f"{index}-requirements.txt")
        chain[-1].write_text(path.read_text().replace("${MLFLOW_VERSION}", MLFLOW_VERSION.group(1)))
    result = subprocess.run(
        [uv(), "pip", "compile", "--quiet", "--no-header", "--python-platform", platform,
         "--python-version", PYTHON_VERSION, "--only-binary", ":all:", "-o", str(out), *map(str, chain)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, f"{role} does not resolve for {platform}:\n{result.stderr[-3000:]}"
    pinned = {line.split("==")[0].lower() for line in out.read_text().splitlines() if "==" in line}
    if ROLES / "python_image/docker/requirements.txt" in requirement_chain(role):
        # (JupyterHub's image has no MLflow: its people's servers have.)
        assert f"mlflow=={MLFLOW_VERSION.group(1)}" in out.read_text().splitlines(), "MLflow is not the pinned release"
    if ROLES / "ml_image/docker/requirements.txt" in requirement_chain(role):
        # The marker picks the build that has wheels for the machine.
        assert ("tensorflow-cpu" if platform.startswith("x86_64") else "tensorflow") in pinned, sorted(pinned)
