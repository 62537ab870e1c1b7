"""What the local inventory gives a Mac with Docker Desktop, as Ansible computes it from the
inventory and group_vars (no host is contacted). What needs an engine is tested on the deployed
stack: the engine reached through the docker CLI's context (tests/test_e2e_local.py), an engine
that does not answer and limits beyond the engine's memory (tests/test_bad_input.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import PROJECT, ansible_playbook, require, run, write_vars

# Docker Desktop's default VM has 8 GiB, of which its kernel reports about 7.7 to containers.
DESKTOP_MEMORY_GIB = 7.5


def computed(expression: str, tmp_path: Path, **settings: object) -> Any:
    """An expression evaluated for localhost of the local inventory."""
    extra = write_vars(tmp_path / "vars.json", {"aie_keys_dir": str(tmp_path / "keys"), **settings})
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "-i", "inventory/local", "localhost",
         "-m", "ansible.builtin.debug", "-a", f"msg={{{{ {expression} | to_json }}}}", "-e", extra, "-o"],
        cwd=PROJECT, capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(json.loads(result.stdout.split("=> ", 1)[1])["msg"])


def test_the_local_stacks_memory_limits_fit_docker_desktops_vm(tmp_path: Path) -> None:
    # Every container of the local stack (serving included, once a model is registered, and the
    # backup agent and its Docker proxy): their limits, as validation adds them up.
    limits = computed("aie_host_memory_limits", tmp_path)
    assert set(limits) == {"mlflow", "sftp", "s3", "jupyterlab", "serving", "backup", "docker-proxy"}
    assert sum(limits.values()) <= DESKTOP_MEMORY_GIB * 2**30, limits
    # The notebooks train in JupyterLab: it keeps the largest share.
    assert limits["jupyterlab"] == max(limits.values()) >= 2.5 * 2**30


def test_the_extra_ca_is_the_first_system_bundle_found(tmp_path: Path) -> None:
    # As on a Mac: no Debian bundle, Homebrew's bundle in its place.
    homebrew = tmp_path / "homebrew-cert.pem"
    homebrew.write_text("-----BEGIN CERTIFICATE-----\n")
    bundles = [str(tmp_path / "no-debian-bundle.crt"), str(homebrew), "/etc/ssl/certs/ca-certificates.crt"]
    assert computed("aie_extra_ca_certificates", tmp_path, aie_system_ca_bundles=bundles) == [str(homebrew)]
    assert computed("aie_extra_ca_certificates", tmp_path, aie_system_ca_bundles=bundles[:1]) == []


def test_a_base_image_that_cannot_be_had_is_reported_as_itself_off_debian(tmp_path: Path, docker_engine: None) -> None:
    # As on a Mac whose Docker Desktop reaches no registry: the pull fails, and debootstrap (apt,
    # as root) is not tried, since the host is no Debian (the fact, overridden here).
    extra = write_vars(tmp_path / "vars.json", {
        "aie_name_prefix": "aiedesk", "aie_keys_dir": str(tmp_path / "keys"),
        "aie_base_image": "registry.invalid/aie/base:1", "aie_common_image": "aiedesk/common:latest",
        "__base_image_debootstrap_here": False})
    try:
        done = ansible_playbook("-i", "inventory/local", "playbooks/prerequisites.yml", "-e", extra)
    finally:
        run(["docker", "network", "rm", "aiedesk"], timeout=60)
    assert done.returncode != 0, done.stdout[-2000:]
    output = " ".join(done.stdout.split())
    assert ("The base image registry.invalid/aie/base:1 is not on localhost's Docker engine and cannot be pulled "
            "(") in output and "registry.invalid" in output.split("cannot be pulled (", 1)[1][:200]
    assert "debootstrap makes it only on a Debian or Ubuntu Docker host" in output
    assert "Build the base image with debootstrap" not in done.stdout


def test_a_missing_tool_fails_its_test_except_on_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    # On Linux scripts/bootstrap installs OpenSSH's server and Chromium: their absence is a failure.
    with pytest.raises(pytest.fail.Exception, match="OpenSSH's server: missing on this machine"):
        require(False, "OpenSSH's server")
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(pytest.skip.Exception, match="OpenSSH's server: not on this Mac"):
        require(False, "OpenSSH's server")
    require(True, "OpenSSH's server")


def test_an_override_changes_one_field_of_one_service(tmp_path: Path) -> None:
    # The local inventory's overrides give JupyterLab 2560m; this one 16g, and nothing else changes.
    override = {"jupyterlab": {"memory": "16g"}}
    runs: dict[str, dict[str, object]] = {"default": {}, "changed": {"aie_service_overrides": override}}
    for name in runs:
        (tmp_path / name).mkdir()
    default, changed = (computed("[aie_services, aie_container_security]", tmp_path / name, **settings)
                        for name, settings in runs.items())
    assert default[0]["jupyterlab"]["memory"] == "2560m" and changed[0]["jupyterlab"]["memory"] == "16g"
    assert changed[1]["jupyterlab"]["memory"] == "16g"
    assert {**changed[0]["jupyterlab"], "memory": "2560m"} == default[0]["jupyterlab"]
    assert changed[0]["jupyterlab"]["port"] == 8888 and changed[0]["jupyterlab"]["confinement"]["home_size"] == "2g"
    # Extra vars replace the inventory's overrides whole: the other services are back at their defaults.
    assert changed[0]["mlflow"]["memory"] == "2g" and default[0]["mlflow"]["memory"] == "1536m"
