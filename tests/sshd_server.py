"""A throw-away OpenSSH server (``/usr/sbin/sshd``) for tests and benchmarks.

Everything lives in one directory: the host key, a client key pair,
``authorized_keys``, ``sshd_config``, a ``known_hosts`` that pins the host key, and a
client ``ssh_config`` whose ``Host artifacts`` alias points at the server. The server
listens on 127.0.0.1 only, accepts only the generated client key, and serves SFTP
through ``internal-sftp``.

Usable without pytest (see ``benchmarks/sftp_throughput.py``):
``SSHTestEnv.create(dir)`` returns a running environment, ``env.close()`` stops it.
The pytest fixtures in the test module are thin wrappers around it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SSHD = os.environ.get("AIE_TEST_SSHD", "/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
HOST_ALIAS = "artifacts"
LISTEN_ADDRESS = "127.0.0.1"


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LISTEN_ADDRESS, 0))
        port: int = sock.getsockname()[1]
        return port


def generate_key(path: Path, key_type: str = "ed25519") -> Path:
    """Create an unencrypted key pair ``path`` / ``path.pub`` with ssh-keygen."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", key_type, "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    return path


def public_key(path: Path) -> str:
    """``<type> <base64>`` of the public half of the key pair at ``path``."""
    key_type, blob = Path(f"{path}.pub").read_text().split()[:2]
    return f"{key_type} {blob}"


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Linux /proc walk; empty list elsewhere)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is parenthesised and may contain spaces.
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@dataclass
class SSHDServer:
    """One ``sshd -D -e`` process with its own config, host key and log file."""

    workdir: Path
    port: int
    host_key: Path
    authorized_keys: Path
    name: str = "sshd"
    # Extra options of internal-sftp, e.g. "-P mkdir" to refuse mkdir requests.
    sftp_options: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}_config"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def write_config(self) -> None:
        self.config_path.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {LISTEN_ADDRESS}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    f"PidFile {self.workdir / (self.name + '.pid')}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "UsePAM no",
                    "UseDNS no",
                    # No MaxStartups: sshd's default (10:30:100) is what clients must cope with.
                    "MaxSessions 50",
                    f"Subsystem sftp internal-sftp {self.sftp_options}".rstrip(),
                    "LogLevel INFO",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        if os.getuid() == 0:
            # sshd refuses to start without its privilege-separation directory.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.write_config()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._wait_for_banner(timeout)

    def _wait_for_banner(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n" + self.log_text())
            try:
                with socket.create_connection((LISTEN_ADDRESS, self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError as exc:
                last_error = exc
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on port {self.port}: {last_error}\n" + self.log_text())

    def stop(self) -> None:
        """Kill the listener AND every per-connection child (like a host restart).

        Stopping only the listener (what ``systemctl restart ssh`` does) would leave
        open connections alive, which is not the failure the store has to survive.
        """
        proc = self.process
        if proc is None:
            return
        self.process = None
        victims = [proc.pid, *_descendants(proc.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # Wait until the killed connection processes are gone (or zombies).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in victims[1:]):
            time.sleep(0.01)

    def restart(self) -> None:
        self.stop()
        self.start()

    def session_pids(self) -> list[int]:
        """Processes serving open connections (children of the listener)."""
        return [] if self.process is None else _descendants(self.process.pid)

    def restart_with_frozen_sessions(self) -> None:
        """Restart so that open connections drop only once the new server is up.

        Open sessions are frozen (SIGSTOP), the listener is replaced, and only then are
        the frozen sessions killed: a client blocked on such a connection sees it drop
        at a moment when reconnecting can succeed. Deterministic, no sleeps.
        """
        proc = self.process
        if proc is None:
            raise RuntimeError(f"{self.name} is not running")
        sessions = _descendants(proc.pid)
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        proc.kill()
        proc.wait(timeout=10)
        self.process = None
        self.start()
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in sessions):
            time.sleep(0.01)

    def accepted_logins(self) -> int:
        """How many logins this server (across restarts) has accepted so far."""
        return self.log_text().count("Accepted publickey for ")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class SSHTestEnv:
    """A running sshd plus everything a client needs to reach it as ``artifacts``."""

    root: Path
    server: SSHDServer
    client_key: Path
    known_hosts: Path
    ssh_config: Path
    data_dir: Path
    user: str
    extra_servers: list[SSHDServer] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path) -> SSHTestEnv:
        root.mkdir(parents=True, exist_ok=True)
        keys = root / "keys"
        keys.mkdir(exist_ok=True)
        host_key = generate_key(keys / "ssh_host_ed25519_key")
        client_key = generate_key(keys / "client_ed25519")
        authorized_keys = keys / "authorized_keys"
        authorized_keys.write_text(public_key(client_key) + "\n")
        os.chmod(authorized_keys, 0o600)
        port = free_port()
        known_hosts = root / "known_hosts"
        known_hosts.write_text(f"[{LISTEN_ADDRESS}]:{port} {public_key(host_key)}\n")
        data_dir = root / "data"
        data_dir.mkdir(exist_ok=True)
        server = SSHDServer(root, port, host_key, authorized_keys)
        env = cls(
            root,
            server,
            client_key,
            known_hosts,
            root / "ssh_config",
            data_dir,
            current_user(),
        )
        env.write_client_config(env.ssh_config)
        server.start()
        return env

    @property
    def port(self) -> int:
        return self.server.port

    def write_client_config(
        self,
        path: Path,
        *,
        known_hosts: Path | None = None,
        identity_file: Path | None = None,
        port: int | None = None,
        identity_files: Sequence[Path] | None = None,
        first_lines: Sequence[str] = (),
        host_lines: Sequence[str] = (),
        alias: str = HOST_ALIAS,
    ) -> Path:
        """Write a client ssh_config for the ``artifacts`` alias (with overrides).

        ``identity_files`` replaces the one IdentityFile line (``[]``: none at all);
        ``first_lines`` go before the ``Host`` block, ``host_lines`` into it.
        """
        if identity_files is None:
            identity_files = [identity_file or self.client_key]
        path.write_text(
            "\n".join(
                [
                    *first_lines,
                    f"Host {alias}",
                    f"    HostName {LISTEN_ADDRESS}",
                    f"    Port {self.port if port is None else port}",
                    f"    User {self.user}",
                    *(f"    IdentityFile {key}" for key in identity_files),
                    *(f"    {line}" for line in host_lines),
                    "    IdentitiesOnly yes",
                    f"    UserKnownHostsFile {known_hosts or self.known_hosts}",
                    "    GlobalKnownHostsFile /dev/null",
                    "    StrictHostKeyChecking yes",
                    "    BatchMode yes",
                    "",
                ]
            )
        )
        return path

    def uri(self, remote_dir: Path | str) -> str:
        """``sftp://artifacts/<absolute remote_dir>``."""
        path = str(remote_dir)
        if not path.startswith("/"):
            raise ValueError(f"remote dir must be absolute: {path}")
        return f"sftp://{HOST_ALIAS}{path}"

    def start_impostor(self, port: int | None = None, name: str = "impostor") -> SSHDServer:
        """Start a second sshd with a DIFFERENT host key (same authorised client key).

        With ``port=None`` it takes over the main server's address, so the main server
        must be stopped first; see ``impostor_on_main_port``.
        """
        host_key = self.root / "keys" / f"{name}_host_ed25519_key"
        if not host_key.exists():
            generate_key(host_key)
        server = SSHDServer(
            self.root,
            self.port if port is None else port,
            host_key,
            self.server.authorized_keys,
            name=name,
        )
        server.start()
        self.extra_servers.append(server)
        return server

    def start_variant(self, name: str, sftp_options: str) -> SSHDServer:
        """Start a second sshd with the main host key on a port of its own.

        Its known_hosts entry is added, so ``sftp://artifacts:<port>/...`` reaches it.
        """
        server = SSHDServer(
            self.root, free_port(), self.server.host_key, self.server.authorized_keys, name, sftp_options
        )
        with self.known_hosts.open("a") as known_hosts:
            known_hosts.write(f"[{LISTEN_ADDRESS}]:{server.port} {public_key(self.server.host_key)}\n")
        server.start()
        self.extra_servers.append(server)
        return server

    @contextlib.contextmanager
    def impostor_on_main_port(self) -> Iterator[SSHDServer]:
        """Put a server with another host key on the main address, then restore."""
        self.server.stop()
        impostor: SSHDServer | None = None
        try:
            impostor = self.start_impostor()
            yield impostor
        finally:
            if impostor is not None:
                impostor.stop()
            self.server.start()

    def close(self) -> None:
        for server in self.extra_servers:
            server.stop()
        self.server.stop()
