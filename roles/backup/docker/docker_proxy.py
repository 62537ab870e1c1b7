#!/usr/bin/python3
"""The Docker API for the backup container, cut down to the calls its backups make.

Usage: aie-docker-proxy CONFIG   (JSON: "socket", the socket to listen on; "pause", containers
the backups pause; "exec", the commands they run, each {"container", "command", "user"})

The backup container pauses the object store while restic reads its volume and runs a
database's dump in that database's container. With the Docker socket itself it could do anything
Docker can: start a privileged container, which is root on the host. This proxy, in a container
of its own with no capability, holds the socket instead and lets through, on a socket of its own
that only the backup container mounts:
- POST /containers/NAME/pause and /unpause, GET /containers/NAME/json (answered with the
  container's State only), for the containers of "pause";
- POST /containers/NAME/exec whose body asks for exactly a command of "exec" (its container,
  argv and user, output attached, nothing else), and then POST /exec/ID/start and GET /exec/ID/json
  for the execs it created itself;
and refuses every other call (403, naming it).

Written by hand: socket proxies such as HAProxy (tecnativa/docker-socket-proxy) filter by method
and path only, and would let any command run in the database's container; this one checks the
command in the request's body.
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


def handler(rules: Rules) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # No keep-alive: one request, one answer, then the connection closes.
        protocol_version = "HTTP/1.0"

        def address_string(self) -> str:
            # A Unix socket's peer has no address (http.server would log client_address[0]).
            return "backup"

        def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def refuse(self) -> None:
            message = f"aie-docker-proxy: {self.command} {self.path} is not a call the backups make"
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
            else:
                self.refuse()

        def do_DELETE(self) -> None:  # noqa: N802 - http.server's name
            self.refuse()

        do_PUT = do_HEAD = do_DELETE  # noqa: N815 - http.server's names

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
    with Server(path, handler(Rules(config))) as server:
        os.chmod(path, 0o660)
        print(f"aie-docker-proxy: listening on {path}", file=sys.stderr, flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
