"""The Docker proxy's rules for JupyterHub's spawner, against the real Docker engine.

aie-docker-proxy (roles/backup/docker/docker_proxy.py) runs here on a socket of its own with the
"spawn" rules JupyterHub's would have, and docker-py (DockerSpawner's own client) asks it for
what DockerSpawner asks (a person's server: created, started, looked at, stopped, removed) and
for what a hub taken over would ask (root on the host, another person's files, other containers).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from docker.errors import APIError

from conftest import PROJECT, run

pytestmark = pytest.mark.docker

PREFIX = "aiesp"
IMAGE = "aie/common:latest"
USER = "10001:10001"
HOME = "/home/aie/work"
MEMORY = 256 * 1024 * 1024
CPUS = 0.5
PEOPLE = ("alice", "bob")


def name(person: str) -> str:
    return f"{PREFIX}-jupyter-{person}"


@pytest.fixture(scope="module")
def proxy(common_image: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("spawn-proxy")
    shared = work / "shared"
    shared.mkdir()
    (shared / "regression.ipynb").write_text("{}")
    real = docker.APIClient(base_url="unix:///var/run/docker.sock", version="auto")
    network = f"{PREFIX}-net"
    real.create_network(network)
    for person in PEOPLE:
        real.create_volume(name(person))
    # A container of the deployment's that the hub has no business with.
    bystander = real.create_container(IMAGE, ["sleep", "600"], name=f"{PREFIX}-bystander")
    real.start(bystander)
    socket = work / "docker.sock"
    config = {"socket": str(socket), "client": "JupyterHub", "spawn": {
        "image": IMAGE, "user": USER, "network": network, "containers": [name(person) for person in PEOPLE],
        "home": HOME, "shared": {"source": str(shared), "target": "/home/aie/shared"},
        "memory": MEMORY, "cpus": CPUS}}
    (work / "proxy.json").write_text(json.dumps(config))
    server = subprocess.Popen([sys.executable, str(PROJECT / "roles/backup/docker/docker_proxy.py"),
                               str(work / "proxy.json")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield {"client": docker.APIClient(base_url=f"unix://{socket}", version="auto"), "real": real,
               "network": network, "shared": shared, "bystander": bystander["Id"]}
    finally:
        server.terminate()
        server.wait(10)
        run(["docker", "rm", "-f", f"{PREFIX}-bystander", *(name(person) for person in PEOPLE)])
        run(["docker", "volume", "rm", *(name(person) for person in PEOPLE)])
        run(["docker", "network", "rm", network])


def server(proxy: dict[str, Any], person: str = "alice", host: dict[str, Any] | None = None,
           **create: Any) -> dict[str, Any]:
    """What DockerSpawner asks for a person's server (aie_hub.configure's settings), with changes."""
    client = proxy["client"]
    host_config: dict[str, Any] = {
        "binds": {name(person): {"bind": HOME, "mode": "rw,nocopy"},
                  str(proxy["shared"]): {"bind": "/home/aie/shared", "mode": "ro"}},
        "network_mode": proxy["network"], "mem_limit": MEMORY, "cpu_period": 100_000,
        "cpu_quota": int(CPUS * 100_000), "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
        "pids_limit": 512, "log_config": {"type": "json-file", "config": {"max-size": "10m"}},
        "auto_remove": True}
    host_config.update(host or {})
    kwargs: dict[str, Any] = {"image": IMAGE, "command": ["sleep", "600"], "name": name(person), "user": USER,
                              "environment": {"MLFLOW_TRACKING_USERNAME": person},
                              "volumes": [HOME, "/home/aie/shared"]}
    kwargs.update(create)
    kwargs["host_config"] = client.create_host_config(**host_config)
    created: dict[str, Any] = client.create_container(**kwargs)
    return created


def refusal(call: Any) -> str:
    with pytest.raises(APIError) as refused:
        call()
    assert refused.value.status_code == 403, refused.value
    return str(refused.value.explanation)


def test_a_persons_server_is_created_started_and_removed_through_the_proxy(proxy: dict[str, Any]) -> None:
    client = proxy["client"]
    # DockerSpawner first looks for the server by its name: not there yet, Docker's 404.
    with pytest.raises(APIError) as missing:
        client.inspect_container(name("alice"))
    assert missing.value.status_code == 404, missing.value
    created = server(proxy)
    client.start(created["Id"])
    found = client.inspect_container(created["Id"])
    assert found["State"]["Running"], found["State"]
    assert proxy["network"] in found["NetworkSettings"]["Networks"]
    assert client.inspect_container(name("alice"))["Id"] == created["Id"]
    # What it runs with, as Docker has it.
    host = proxy["real"].inspect_container(created["Id"])["HostConfig"]
    assert (host["Memory"], host["CapDrop"], host["SecurityOpt"], host["Privileged"]) == (
        MEMORY, ["ALL"], ["no-new-privileges"], False)
    done = run(["docker", "exec", name("alice"), "sh", "-c",
                "id -u; touch /home/aie/shared/x 2>&1 || echo read-only; ls /home/aie/shared"])
    assert done.stdout.split("\n")[0] == "10001", done.stdout
    assert "read-only" in done.stdout and "regression.ipynb" in done.stdout, done.stdout
    client.stop(created["Id"], timeout=1)
    deadline = time.monotonic() + 30
    while name("alice") in run(["docker", "ps", "-a", "--format", "{{.Names}}"]).stdout:
        assert time.monotonic() < deadline, "the stopped server was not removed"
        time.sleep(0.2)


@pytest.mark.parametrize(("what", "host", "create", "culprit"), [
    ("privileged", {"privileged": True}, {}, "HostConfig.Privileged"),
    ("a capability back", {"cap_add": ["SYS_ADMIN"]}, {}, "HostConfig.CapAdd"),
    ("the host's root", {"binds": {"/": {"bind": "/host", "mode": "rw"}}}, {}, "HostConfig.Binds"),
    ("the Docker socket", {"binds": {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}}}, {},
     "HostConfig.Binds"),
    ("bob's volume in alice's server", {"binds": {name("bob"): {"bind": HOME, "mode": "rw"}}}, {},
     "HostConfig.Binds"),
    ("another folder of the host", {"binds": {"/tmp": {"bind": "/home/aie/shared", "mode": "ro"}}}, {},
     "HostConfig.Binds"),
    ("the host's processes", {"pid_mode": "host"}, {}, "HostConfig.PidMode"),
    ("the host's network", {"network_mode": "host"}, {}, "HostConfig.NetworkMode"),
    ("seccomp off", {"security_opt": ["no-new-privileges", "seccomp=unconfined"]}, {}, "HostConfig.SecurityOpt"),
    ("no memory limit", {"mem_limit": None}, {}, "HostConfig.Memory"),
    ("above the memory limit", {"mem_limit": MEMORY * 2}, {}, "HostConfig.Memory"),
    ("above the CPU limit", {"cpu_quota": 200_000}, {}, "HostConfig.CpuQuota"),
    ("a device", {"devices": ["/dev/sda:/dev/sda:rwm"]}, {}, "HostConfig.Devices"),
    ("a published port", {"port_bindings": {8888: 8888}}, {}, "HostConfig.PortBindings"),
    ("as root", {}, {"user": "0:0"}, "User"),
    ("another image", {}, {"image": "aie/python:latest"}, "Image"),
    ("another name", {}, {"name": f"{PREFIX}-bystander2"}, "the name"),
    ("an entrypoint of its own", {}, {"entrypoint": ["sh"]}, "Entrypoint"),
])
def test_the_proxy_refuses_what_the_spawner_never_asks(
        proxy: dict[str, Any], what: str, host: dict[str, Any], create: dict[str, Any], culprit: str) -> None:
    explanation = refusal(lambda: server(proxy, host=host, **create))
    assert culprit in explanation, (what, explanation)
    assert name("alice") not in run(["docker", "ps", "-a", "--format", "{{.Names}}"]).stdout


def test_the_hub_cannot_touch_other_containers_run_commands_or_list(proxy: dict[str, Any]) -> None:
    client, bystander = proxy["client"], proxy["bystander"]
    for call in (lambda: client.inspect_container(bystander), lambda: client.stop(bystander),
                 lambda: client.remove_container(bystander, force=True), lambda: client.containers(),
                 lambda: client.images(), lambda: client.volumes(),
                 lambda: client.create_volume("aiesp-other"), lambda: client.pull("debian")):
        refusal(call)
    assert proxy["real"].inspect_container(bystander)["State"]["Running"]
    created = server(proxy, person="bob")
    client.start(created["Id"])
    try:
        refusal(lambda: client.exec_create(created["Id"], ["id"]))
    finally:
        client.stop(created["Id"], timeout=1)

