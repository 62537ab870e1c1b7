"""When no person of mlflow_users has `jupyterhub: true` any more, `aie up` removes the hub an
earlier run left: its container, its Docker proxy and the people's servers go (nobody signs in to a
hub that kept the people it was started with), their volumes stay, and nothing else is touched.
`aie down --purge` then removes those volumes, no longer in the registry, with the data volumes.

The hub's containers here are stand-ins of the common image under the hub's names (deploying the
hub takes minutes; tests/test_jupyterhub.py does it): the playbook finds and removes them by
name, on the real Docker engine, as it would the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ansible_playbook, changed_tasks, containers, run, write_vars

pytestmark = pytest.mark.docker
PREFIX = "aiert"
HUB = [f"{PREFIX}-jupyterhub", f"{PREFIX}-jupyterhub-docker-proxy", f"{PREFIX}-jupyterhub-people",
       f"{PREFIX}-jupyterhub-user-dana", f"{PREFIX}-jupyterhub-user-eve-2"]
# Of the same deployment or of another, under names that only look alike: kept.
BYSTANDERS = [f"{PREFIX}-jupyterlab", f"{PREFIX}-jupyterhubby", f"{PREFIX}-jupyterhub-user-", f"x{PREFIX}-jupyterhub"]
VOLUME = f"{PREFIX}-jupyterhub-user-dana"
# A volume whose name only looks like a person's: kept by `aie down --purge` too.
LOOKALIKE_VOLUME = f"{PREFIX}-jupyterhubby-data"


def remove_all() -> None:
    run(["docker", "rm", "-f", *HUB, *BYSTANDERS], timeout=120)
    run(["docker", "volume", "rm", "-f", VOLUME, LOOKALIKE_VOLUME], timeout=60)


@pytest.fixture
def left_behind(common_image: None) -> Iterator[None]:
    remove_all()
    for volume in (VOLUME, LOOKALIKE_VOLUME):
        assert run(["docker", "volume", "create", volume]).returncode == 0
    for name in HUB + BYSTANDERS:
        mounts = ["-v", f"{VOLUME}:/work"] if name.endswith("-user-dana") else []
        started = run(["docker", "run", "-d", "--name", name, *mounts, "aie/common:latest", "sleep", "infinity"])
        assert started.returncode == 0, started.stderr
    assert run(["docker", "run", "--rm", "-v", f"{VOLUME}:/work", "aie/common:latest", "sh", "-c",
                "echo dana > /work/dana.txt"]).returncode == 0
    try:
        yield
    finally:
        remove_all()


def test_a_hub_no_one_may_use_is_removed_and_its_volumes_kept(left_behind: None, tmp_path: Path) -> None:
    extra = write_vars(tmp_path / "vars.json", {"aie_name_prefix": PREFIX, "aie_keys_dir": str(tmp_path / "keys"),
                                               "mlflow_users": [{"name": "dana"}]})
    playbook = ("-i", "inventory/local", "playbooks/jupyterhub.yml", "-e", extra)
    check = ansible_playbook(*playbook, "--check")
    assert check.returncode == 0, check.stdout[-3000:]
    assert changed_tasks(check.stdout) == 1, check.stdout[-3000:]
    assert sorted(set(HUB) & set(containers(PREFIX))) == sorted(HUB)

    done = ansible_playbook(*playbook)
    assert done.returncode == 0, done.stdout[-3000:]
    assert changed_tasks(done.stdout) == 1, done.stdout[-3000:]
    left = set(containers(PREFIX)) | set(containers(f"x{PREFIX}"))
    assert not set(HUB) & left
    assert set(BYSTANDERS) <= left
    kept = run(["docker", "run", "--rm", "-v", f"{VOLUME}:/work", "aie/common:latest", "cat", "/work/dana.txt"])
    assert kept.stdout.strip() == "dana", kept.stderr

    again = ansible_playbook(*playbook)
    assert again.returncode == 0 and changed_tasks(again.stdout) == 0, again.stdout[-3000:]

    # No longer in the registry, dana's volume is still one of the deployment's data volumes.
    purged = ansible_playbook("-i", "inventory/local", "playbooks/down.yml", "-e", extra, "-e", "aie_purge=true")
    assert purged.returncode == 0, purged.stdout[-3000:]
    volumes = run(["docker", "volume", "ls", "-q"]).stdout.split()
    assert VOLUME not in volumes and LOOKALIKE_VOLUME in volumes
