#!/usr/bin/python3
"""The Docker API, cut down to the calls of one client: the backups, or JupyterHub's spawner.

Usage: aie-docker-proxy CONFIG   (JSON: "socket", the socket to listen on; "client", who asks;
"pause", containers the backups pause; "exec", the commands they run, each {"container",
"command", "user"}; "spawn", the notebook servers JupyterHub may start, see SpawnRules)

The backup container pauses the object store while restic reads its volume and runs a
database's dump in that database's container. JupyterHub starts and stops each person's
notebook server. With the Docker socket itself either could do anything Docker can: start a
privileged container, or one that mounts the host's /, which is root on the host. This proxy, in
a container of its own with no capability, holds the socket instead and lets through, on a
socket of its own that only its client mounts:
- for the backups: POST /containers/NAME/pause and /unpause, GET /containers/NAME/json (answered
  with the container's State only), for the containers of "pause"; POST /containers/NAME/exec
  whose body asks for exactly a command of "exec" (its container, argv and user, output attached,
  nothing else), and then POST /exec/ID/start and GET /exec/ID/json for the execs it created
  itself;
- for JupyterHub (its spawner, DockerSpawner, speaks Docker's versioned API, /v1.NN/...): the
  engine's version, and the creation of a container named for a person of "spawn" from the
  notebook image, as the notebook user, with no capability, on the deployment's network, within
  the memory and CPU limits, mounting only that person's volume and the shared notebooks (read
  only); then the state, start, stop and removal of those containers only;
and refuses every other call (403, naming it).

Written by hand: socket proxies such as HAProxy (tecnativa/docker-socket-proxy) filter by method
and path only, and would let any command run in the database's container, or any container be
created; this one checks the request's body.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import socketserver
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any

DOCKER = "/var/run/docker.sock"
# What an allowed exec may ask for besides its command and user.
EXEC_FIELDS = {"Cmd", "User", "AttachStdout", "AttachStderr"}


class Rules:
    """What the proxy lets through, and the execs it created (their ids)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.paused = {str(name) for name in config.get("pause", [])}
        self.commands = [(str(rule["container"]), [str(arg) for arg in rule["command"]], str(rule["user"]))
                         for rule in config.get("exec", [])]
        self.execs: set[str] = set()
        self.lock = threading.Lock()

    def container(self, path: str, action: str) -> str | None:
        """The container of /containers/NAME/ACTION, when NAME is one name (no slash, no dots)."""
        found = re.fullmatch(r"/containers/([^/]+)/" + re.escape(action), path)
        if not found:
            return None
        name = urllib.parse.unquote(found.group(1))
        return name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) else None

    def exec_allowed(self, container: str, body: bytes) -> bool:
        try:
            asked = json.loads(body or b"{}")
        except ValueError:
            return False
        if not isinstance(asked, dict) or set(asked) - EXEC_FIELDS:
            return False
        if asked.get("AttachStdout") is not True or asked.get("AttachStderr") is not True:
            return False
        return (container, asked.get("Cmd"), asked.get("User")) in self.commands

    def exec_id(self, path: str, action: str) -> str | None:
        found = re.fullmatch(r"/exec/([0-9a-f]{64})/" + re.escape(action), path)
        with self.lock:
            return found.group(1) if found and found.group(1) in self.execs else None


# The fields of a notebook server's creation that may be set (any other must be empty), and how
# its HostConfig's are checked (SpawnRules.refusal).
CREATE_FIELDS = {"Image", "User", "Env", "Cmd", "Hostname", "Domainname", "ExposedPorts", "Volumes", "Labels",
                 "WorkingDir", "AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce",
                 "StopSignal", "StopTimeout", "HostConfig", "NetworkingConfig"}
HOST_FIELDS = {"Binds", "NetworkMode", "Memory", "CpuPeriod", "CpuQuota", "CapDrop", "SecurityOpt", "PidsLimit",
               "LogConfig", "AutoRemove"}
LOG_DRIVERS = {"json-file", "local"}
# Docker's versioned paths (DockerSpawner's client speaks /v1.NN/...).
VERSIONED = re.compile(r"(?:/v1\.\d+)?(/[^?]*)(?:\?(.*))?")
# A container's reference in a path: its name or id.
REFERENCE = r"([A-Za-z0-9][A-Za-z0-9_.-]*)"


class SpawnRules:
    """The notebook servers JupyterHub may create, and what each may be (config "spawn"):
    {"image", "user" (uid:gid), "network", "containers" (their names: each mounts the volume of
    its own name at "home"), "home", "shared" ({"source", "target"}: a folder of the host,
    mounted read-only), "memory" (bytes), "cpus"}."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.image = str(config["image"])
        self.user = str(config["user"])
        self.network = str(config["network"])
        self.names = {str(name) for name in config["containers"]}
        self.home = str(config["home"])
        shared = config.get("shared") or {}
        self.shared = f"{shared['source']}:{shared['target']}:ro" if shared else None
        self.memory = int(config["memory"])
        self.cpus = float(config["cpus"])

    @staticmethod
    def split(path: str) -> tuple[str, dict[str, str]]:
        """The path without Docker's version, and its query."""
        found = VERSIONED.fullmatch(path)
        if not found:
            return "", {}
        return found.group(1), dict(urllib.parse.parse_qsl(found.group(2) or ""))

    def reference(self, path: str, action: str) -> str | None:
        """The container named in /containers/REF/ACTION (/containers/REF when action is empty)."""
        found = re.fullmatch(r"/containers/" + REFERENCE + (("/" + re.escape(action)) if action else ""), path)
        return found.group(1) if found else None

    def managed(self, reference: str | None) -> bool:
        """Whether the container (name or id) is a notebook server of these rules, asked of Docker."""
        if not reference:
            return False
        status, body, _ = docker("GET", f"/containers/{reference}/json", None)
        if status != 200:
            return False
        found = json.loads(body)
        return found.get("Name", "").lstrip("/") in self.names and found.get("Config", {}).get("Image") == self.image

    def refusal(self, query: dict[str, str], body: bytes) -> str | None:
        """Why this creation is refused (the field at fault), or None."""
        name = query.get("name", "")
        if name not in self.names:
            return f"the name {name!r}"
        try:
            asked = json.loads(body or b"{}")
        except ValueError:
            return "a body that is not JSON"
        if not isinstance(asked, dict) or not isinstance(asked.get("HostConfig"), dict):
            return "a body without HostConfig"
        host = asked["HostConfig"]
        extra = sorted(key for key in set(asked) - CREATE_FIELDS if asked[key])
        extra += sorted(f"HostConfig.{key}" for key in set(host) - HOST_FIELDS if host[key])
        if extra:
            return ", ".join(extra)
        binds = {f"{name}:{self.home}:rw,nocopy", f"{name}:{self.home}:rw"} | ({self.shared} if self.shared else set())
        quota, period = host.get("CpuQuota") or 0, host.get("CpuPeriod") or 0
        checks = {
            "Image": asked.get("Image") == self.image,
            "User": asked.get("User") == self.user,
            "HostConfig.Binds": set(host.get("Binds") or []) <= binds,
            "HostConfig.NetworkMode": host.get("NetworkMode") == self.network,
            "NetworkingConfig": set((asked.get("NetworkingConfig") or {}).get("EndpointsConfig") or {})
            <= {self.network},
            "HostConfig.Memory": isinstance(host.get("Memory"), int) and 0 < host["Memory"] <= self.memory,
            "HostConfig.CpuQuota": isinstance(quota, int) and isinstance(period, int)
            and 0 < quota and 0 < period and quota <= self.cpus * period,
            "HostConfig.CapDrop": [cap.upper() for cap in host.get("CapDrop") or []] == ["ALL"],
            "HostConfig.SecurityOpt": host.get("SecurityOpt") == ["no-new-privileges"],
            "HostConfig.PidsLimit": isinstance(host.get("PidsLimit"), int) and host["PidsLimit"] > 0,
            "HostConfig.LogConfig": (host.get("LogConfig") or {}).get("Type", "json-file") in LOG_DRIVERS,
        }
        wrong = [field for field, right in checks.items() if not right]
        return ", ".join(wrong) if wrong else None


def docker(method: str, path: str, body: bytes | None) -> tuple[int, bytes, str]:
    """One call to the Docker socket: its status, body and content type."""
    connection = http.client.HTTPConnection("localhost", timeout=3600)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(DOCKER)
    connection.sock = sock
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type", "application/json")
    finally:
        connection.close()


def handler(rules: Rules, spawn: SpawnRules | None = None,
            client: str = "the backups") -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # No keep-alive: one request, one answer, then the connection closes.
        protocol_version = "HTTP/1.0"

        def address_string(self) -> str:
            # A Unix socket's peer has no address (http.server would log client_address[0]).
            return client

        def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def refuse(self, why: str = "") -> None:
            message = f"aie-docker-proxy: {self.command} {self.path} is not a call {client} make" + (
                f" (refused: {why})" if why else "")
            self.log_message("%s", message)
            self.answer(403, json.dumps({"message": message}).encode())

        def body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if 0 < length <= 65536 else b""

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path
            name = rules.container(path, "json")
            if name in rules.paused:
                status, body, _ = docker("GET", path, None)
                if status == 200:
                    body = json.dumps({"State": json.loads(body).get("State", {})}).encode()
                self.answer(status, body)
            elif rules.exec_id(path, "json"):
                self.answer(*docker("GET", path, None))
            elif spawn and self.spawned("GET", ("json",)):
                return
            else:
                self.refuse()

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            path, body = self.path, self.body()
            if rules.container(path, "pause") in rules.paused or rules.container(path, "unpause") in rules.paused:
                self.answer(*docker("POST", path, None))
            elif (name := rules.container(path, "exec")) and rules.exec_allowed(name, body):
                status, answer, kind = docker("POST", path, body)
                if status == 201:
                    with rules.lock:
                        rules.execs.add(json.loads(answer)["Id"])
                self.answer(status, answer, kind)
            elif rules.exec_id(path, "start"):
                self.answer(*docker("POST", path, json.dumps({"Detach": False, "Tty": False}).encode()))
            elif spawn and (asked := SpawnRules.split(path))[0] == "/containers/create":
                why = spawn.refusal(asked[1], body)
                if why:
                    self.refuse(why)
                else:
                    self.answer(*docker("POST", path, body))
            elif spawn and self.spawned("POST", ("start", "stop", "wait")):
                return
            else:
                self.refuse()

        def do_DELETE(self) -> None:  # noqa: N802 - http.server's name
            if not (spawn and self.spawned("DELETE", ("",))):
                self.refuse()

        def spawned(self, method: str, actions: tuple[str, ...]) -> bool:
            """Let through a call about a notebook server (or the engine's version); False if it is none."""
            assert spawn is not None
            path, _ = SpawnRules.split(self.path)
            if method == "GET" and path in ("/version", "/_ping"):
                self.answer(*docker("GET", self.path, None))
                return True
            references = [spawn.reference(path, action) for action in actions]
            # A server's state by its name, there or not (404: DockerSpawner starts it then);
            # anything else only for a container that is one of the servers.
            if not ((method == "GET" and any(reference in spawn.names for reference in references))
                    or any(spawn.managed(reference) for reference in references)):
                return False
            self.answer(*docker(method, self.path, None))
            return True

        def do_PUT(self) -> None:  # noqa: N802 - http.server's name
            self.refuse()

        do_HEAD = do_PUT  # noqa: N815 - http.server's name

    return Handler


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    config = json.loads(open(argv[0]).read())
    path = config["socket"]
    if os.path.exists(path):
        os.remove(path)
    spawn = SpawnRules(config["spawn"]) if config.get("spawn") else None
    with Server(path, handler(Rules(config), spawn, str(config.get("client", "the backups")))) as server:
        os.chmod(path, 0o660)
        print(f"aie-docker-proxy: listening on {path}", file=sys.stderr, flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
