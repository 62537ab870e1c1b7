"""Shared helpers: the project folder, running the CLI and ansible-playbook, Docker probes."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import pytest
import yaml
from filelock import FileLock

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The end-to-end stack: a prefix and ports of its own, so that a user's stack is left alone.
PREFIX = "aietest"
PORTS = {
    "aie_mlflow_port": 15500, "aie_sftp_port": 12222, "aie_s3_port": 19000,
    "aie_jupyterlab_port": 18888, "aie_serving_port": 15001, "aie_jupyterhub_port": 18000,
}
# The S3 engine the tests deploy: the one a user gets by naming none (s3_default_engine, a
# template: the fallback of its former name minio_default_engine, rendered here with neither set),
# unless AIE_TEST_S3_ENGINE names another; ENGINE_SETTINGS is what the tests pass for it.
ENGINE_SETTINGS = {"s3_engine": os.environ["AIE_TEST_S3_ENGINE"]} if os.environ.get("AIE_TEST_S3_ENGINE") else {}
ENGINE = str(ENGINE_SETTINGS.get("s3_engine") or jinja2.Template(yaml.safe_load(
    (PROJECT / "roles/s3/defaults/main.yml").read_text())["s3_default_engine"]).render())
# The end-to-end stack's MLflow, over HTTPS (its CA: tls_ca(keys)).
MLFLOW_URL = f"https://127.0.0.1:{PORTS['aie_mlflow_port']}"
# MLflow's release pinned for the images, and the previous one the upgrade drills start from: the
# last release of the minor before (test_upgrade.py checks that it is).
PINNED_MLFLOW = str(yaml.safe_load((PROJECT / "group_vars/all/images.yml").read_text())["aie_mlflow_version"])
PREVIOUS_MLFLOW = "3.16.1"


def require(present: bool, what: str) -> None:
    """A test needs `what` on this machine. Missing, it fails the test, except on macOS, where
    the test is skipped with that reason (README, "On a Mac": what `make test` runs there):
    scripts/bootstrap installs it on Debian and Ubuntu, and a skip would hide a test not run."""
    if present:
        return
    if sys.platform == "darwin":
        pytest.skip(f"{what}: not on this Mac")
    pytest.fail(f"{what}: missing on this machine (scripts/bootstrap test installs it on Debian or Ubuntu, as root)")


def tls_ca(keys: Path) -> Path:
    """The CA bundle of a deployment's HTTPS services, generated into its keys folder."""
    return keys / "tls" / "ca.pem"


def run(args: Sequence[str], timeout: float = 1800, extra_env: dict[str, str] | None = None, cwd: Path = PROJECT,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command from the project folder (or cwd, when given), with extra_env added to the
    environment, and capture its output."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", ANSIBLE_NOCOLOR="1",
               **(extra_env or {}))
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False, **kwargs
    )


def aie(*args: str, timeout: float = 3600, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "aie.cli", *args], timeout=timeout, extra_env=extra_env)


def ansible_playbook(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "ansible-playbook"), *args], timeout=timeout)


def load_script(relative: str) -> ModuleType:
    """A Python file of the project that is no package module (a filter plugin, a script copied
    into an image), loaded as a module."""
    path = PROJECT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_secrets(keys: Path) -> dict[str, str]:
    """Every secret the deployment generated (files/keys/secrets, the users' passwords included),
    and a line of each private key, by file name."""
    found = {str(path.relative_to(keys)): path.read_text().split()[0]
             for path in (keys / "secrets").rglob("*") if path.is_file()}
    for path in keys.rglob("*"):
        text = path.read_text(errors="replace") if path.is_file() and path.stat().st_size < 20000 else ""
        if "PRIVATE KEY-----" in text:
            found[str(path.relative_to(keys))] = text.splitlines()[1]
    return found


def secrets_in(text: str, keys: Path) -> list[str]:
    return sorted(name for name, secret in generated_secrets(keys).items() if secret in text)


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return run(["docker", "info", "--format", "{{json .ServerVersion}}"], timeout=60).returncode == 0


def containers(prefix: str) -> list[str]:
    """Names of the containers, running or not, whose name starts with prefix-."""
    if not docker_answers():
        return []
    out = run(["docker", "ps", "-a", "--format", "{{.Names}}"], timeout=60).stdout.split()
    return [name for name in out if name.startswith(f"{prefix}-")]


def s3_client(keys: Path, account: str = "s3_client", port: int = PORTS["aie_s3_port"],
              region: str = "us-east-1") -> Any:
    """A boto3 client of a stack's S3 server (the end-to-end stack's unless another port is given;
    HTTPS, checked against the stack's CA) with boto3's defaults, signed in with the generated keys
    of the artifact clients' account (s3_client) or of the server's own (s3)."""
    import boto3
    from botocore.config import Config

    secrets = keys / "secrets"
    return boto3.client(
        "s3",
        endpoint_url=f"https://127.0.0.1:{port}",
        verify=str(tls_ca(keys)),
        aws_access_key_id=(secrets / f"{account}_access_key").read_text().split()[0],
        aws_secret_access_key=(secrets / f"{account}_secret_key").read_text().split()[0],
        region_name=region,
        config=Config(s3={"addressing_style": "path"}),
    )


def http_status(url: str, account: tuple[str, str] | None = None, body: dict[str, Any] | None = None,
                cafile: Path | None = None) -> int:
    """HTTP status of one call (a POST of body as JSON when given), signed in with basic auth as
    account (name, password) or not at all, an https URL checked against cafile (else the system's
    CAs); 0 when nothing answers in HTTP (no server, a refused certificate, no HTTP on the port)."""
    import base64
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if account is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(account).encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30,
                                    context=context) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, http.client.HTTPException):
        return 0


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def auth_server(work: Path, admin: tuple[str, str], args: Sequence[str] = (),
                env: dict[str, str] | None = None) -> Iterator[str]:
    """A real MLflow server with its basic-auth app, from this virtualenv, on a SQLite store in
    work (admin: the admin account it makes), with more server args and environment; its URL."""
    config = work / "basic_auth.ini"
    config.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{work}/basic_auth.db\n"
                      f"admin_username = {admin[0]}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    environment = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=admin[1],
                       MLFLOW_FLASK_SERVER_SECRET_KEY="a-secret-key-for-the-test-server-0123", **(env or {}))
    log_path = work / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", f"--port={port}",
             "--workers", "1", f"--backend-store-uri=sqlite:///{work}/mlflow.db", *args],
            cwd=work, env=environment, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(120):
                if http_status(url + "/health", None) == 200:
                    break
                assert process.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.5)
            else:
                pytest.fail("MLflow did not answer within 60 s: " + log_path.read_text()[-3000:])
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def mlflow_status(path: str, account: tuple[str, str] | None = None, body: dict[str, Any] | None = None) -> int:
    """HTTP status of one call to the end-to-end stack's MLflow, trusting the CA the stack fixture
    names to MLflow's clients (MLFLOW_TRACKING_SERVER_CERT_PATH)."""
    cafile = Path(os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    return http_status(f"{MLFLOW_URL}{path}", account, body, cafile=cafile)


def mlflow_admin(keys: Path) -> dict[str, str]:
    """The environment with which MLflow's client signs in as the stack's admin (over HTTPS,
    trusting the stack's CA)."""
    password = keys / "secrets" / "mlflow_admin_password"
    return {"MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": password.read_text().split()[0] if password.is_file() else "",
            "MLFLOW_TRACKING_SERVER_CERT_PATH": str(tls_ca(keys))}


def bounded_load(label: str, url: str, keys: Path) -> None:
    """The load benchmark, bounded: 64 clients each create a run and log 10 metric values one call
    at a time and 10 in batches of 5, against a deployment's MLflow; no call fails, no value is missing."""
    done = run([sys.executable, str(PROJECT / "benchmarks/mlflow_load.py"), "--target", f"{label}={url},{keys}",
                "--clients", "64", "--values", "10", "--batch", "5"], timeout=900)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["create_run"]["errors"] == 0 and result["create_run"]["calls"] == 64
    assert result["log_metric"]["errors"] == 0 and result["log_metric"]["calls"] == 640
    assert result["log_batch"]["errors"] == 0 and result["log_batch"]["calls"] == 128
    assert result["values_missing"] == 0


def behind_a_context(work: Path, context: bool = True) -> tuple[list[str], dict[str, str]]:
    """A command prefix and environment under which this machine's Docker engine is reached as
    Docker Desktop offers it: /var/run/docker.sock hidden (a private mount namespace), the engine
    at a socket of its own that the docker CLI's current context names (with context=False, no
    context: nothing answers)."""
    default = Path("/var/run/docker.sock")
    require(default.is_socket() and shutil.which("unshare") is not None,
            "a Docker engine at /var/run/docker.sock and unshare, to hide it")
    socket = work / "desktop.sock"
    socket.touch()
    env = {"DOCKER_CONFIG": str(work / "docker-config"), "AIE_ENGINE_SOCKET": str(default),
           "AIE_CONTEXT_SOCKET": str(socket)}
    if context:
        for command in (["docker", "context", "create", "aie-desktop", "--docker", f"host=unix://{socket}"],
                        ["docker", "context", "use", "aie-desktop"]):
            made = run(command, timeout=60, extra_env=env)
            assert made.returncode == 0, made.stderr
    # As root in a mount namespace of its own: the engine's socket is bound where the context
    # points, and /dev/null over the default one.
    script = ('mount --bind "$AIE_ENGINE_SOCKET" "$AIE_CONTEXT_SOCKET" && mount --bind /dev/null /var/run/docker.sock'
              ' && exec "$@"')
    return ["unshare", "-m", "sh", "-c", script, "sh"], env


def one_play_project(folder: Path, play: str) -> Path:
    """A project folder holding one playbook (play.yml, its YAML text) for localhost, an
    inventory of it and an empty ansible.cfg; the inventory's path."""
    (folder / "ansible.cfg").write_text("[defaults]\n")
    (folder / "hosts.yml").write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        "      ansible_python_interpreter: '{{ ansible_playbook_python }}'\n")
    (folder / "play.yml").write_text(play)
    return folder / "hosts.yml"


def write_vars(path: Path, values: dict[str, object]) -> str:
    path.write_text(json.dumps(values))
    return f"@{path}"


# An earlier release's images, under names of their own (aie-<commit>/<name>), so that today's
# are left alone: the settings that name them.
RELEASE_IMAGES = {"aie_common_image": "common", "aie_python_image": "python", "aie_ml_image": "ml",
                  "mlflow_image": "mlflow", "sftp_image": "sftp", "backup_image": "backup",
                  "jupyterlab_image": "jupyterlab"}


def earlier_release(commit: str, target: Path) -> dict[str, object]:
    """Extracts release `commit` of this project from its git history into `target`, with MLflow
    pinned to PREVIOUS_MLFLOW (a schema behind today's pin, and one Python layer for every earlier
    release); returns the settings that give its images names of their own."""
    archive = subprocess.run(["git", "-C", str(PROJECT), "archive", commit], capture_output=True, check=False)
    assert archive.returncode == 0, (
        f"release {commit} is not in {PROJECT}'s git history (a clone with its history is needed): "
        + archive.stderr.decode()[-500:])
    target.mkdir()
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    requirements = target / "roles/python_image/docker/requirements.txt"
    requirements.write_text("".join(f"mlflow=={PREVIOUS_MLFLOW}\n" if line.startswith("mlflow") else line
                                    for line in requirements.read_text().splitlines(keepends=True)))
    # Releases before the S3 rename call the S3 role and its settings minio.
    engines = yaml.safe_load((target / "roles/minio/defaults/main.yml").read_text())["minio_engines"]
    engines["rgw"]["image"] = f"aie-{commit}/rgw:latest"
    images = {name: f"aie-{commit}/{image}:latest" for name, image in RELEASE_IMAGES.items()}
    return {"minio_engines": engines, **images}


def write_local_inventory(path: Path, groups: Sequence[str]) -> Path:
    """A single-host inventory like inventory/local with only these service groups; its path."""
    path.write_text(yaml.safe_dump({"all": {
        "children": {"aie": {"children": {group: {"hosts": {"localhost": {}}} for group in groups}}},
        "hosts": {"localhost": {"ansible_connection": "local",
                                "ansible_python_interpreter": "{{ ansible_playbook_python }}"}},
        "vars": {"aie_publish_address": "127.0.0.1"},
    }}))
    return path


def in_jupyterlab(*command: str) -> list[str]:
    """`docker exec` of a command in the JupyterLab container as the user the notebooks run as
    (the container's own: README, "Train, version, serve")."""
    return ["docker", "exec", "-i", f"{PREFIX}-jupyterlab", *command]


def assert_unprivileged(container: str) -> dict[str, str]:
    """Asserts that the container runs as a user of its own with no capability, and that none
    of its processes is root or holds one; returns the uid of each process (by PID)."""
    host = json.loads(run(["docker", "inspect", "--format", "{{json .}}", container], timeout=60).stdout)
    assert host["HostConfig"]["CapDrop"] == ["ALL"] and not host["HostConfig"]["CapAdd"], container
    assert host["Config"]["User"] not in ("", "0", "root") and not host["Config"]["User"].startswith("0:"), container
    # The docker exec below runs as the container's user too.
    states = run(["docker", "exec", container, "sh", "-c",
                  "for p in /proc/[0-9]*; do echo ${p#/proc/} $(awk '/^(Uid|CapEff|CapPrm)/{print $2}' $p/status);"
                  " done"], timeout=60)
    seen = [line.split() for line in states.stdout.splitlines() if len(line.split()) == 4]
    assert seen and {pid for pid, *_ in seen} >= {"1"}, states.stdout + states.stderr
    assert all(uid != "0" and caps == prm == "0000000000000000" for _, uid, caps, prm in seen), states.stdout
    return {pid: uid for pid, uid, _, _ in seen}


@functools.cache
def jupyterlab_uid() -> int:
    """The user JupyterLab runs as: the owner of the notebooks folder as the container sees it
    (Docker Desktop shows a Mac user's folder as root's), or the service user when that is root
    (group_vars/all/services.yml, aie_service_user)."""
    seen = run(["docker", "exec", f"{PREFIX}-jupyterlab", "stat", "-c", "%u", "/home/aie/work"], timeout=60)
    assert seen.returncode == 0, seen.stderr
    return int(seen.stdout) or int(yaml.safe_load((PROJECT / "group_vars/all/services.yml").read_text())
                                   ["aie_service_user"].split(":")[0])


def jupyter_exec(*command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command in the JupyterLab container as the user the notebooks run as."""
    return run(in_jupyterlab(*command), timeout=timeout, stdin=subprocess.DEVNULL)


# The modules that share the end-to-end stack (the `stack` fixture): one group, so that one
# worker deploys it once.
STACK_MODULES = {"test_e2e_local", "test_notebook_e2e", "test_restore_drill", "test_s3_stress", "test_laptop_client",
                 "test_jupyterhub"}
# The longest groups, longest first, handed out before the others (`make test` passes
# --no-loadscope-reorder, which keeps this order): a worker that drew a long group late would
# leave the other idle at the end.
LONGEST_FIRST = ["stack", "test_molecule", "test_postgresql", "test_upgrade", "test_dbstore_upgrade"]


def group_of(nodeid: str) -> str:
    """The group of a test: its module, the stack's modules one together."""
    module = Path(nodeid.split("::")[0]).stem
    return "stack" if module in STACK_MODULES else module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need a Docker engine (through the docker_engine fixture) are marked `docker`:
    `make unit` runs the others, the fast ones. The longest groups come first, each group's
    tests in their order."""
    for item in items:
        if "docker_engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)
    rank = {group: place for place, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(group_of(item.nodeid), len(rank)))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test`'s two workers (pytest-xdist, --dist loadscope) each take whole groups: a
    module's deployment is made once, and the independent ones (the stack, PostgreSQL's, the
    upgrade drill's, Molecule's test hosts) run side by side. Written here rather than with
    xdist's `xdist_group` marks and --dist loadgroup: xdist 3.8 groups by rewriting test ids,
    which pytest 9.2 no longer lets it do (every test became a group of its own)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling  # only where xdist runs the tests

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ByGroup(config, log)


@contextmanager
def building(factory: pytest.TempPathFactory) -> Iterator[None]:
    """One deployment that may build images at a time, across the test workers: two building
    the same image at once would each tag their own, and leave the other's containers on an
    image no longer tagged (a later `aie up` then re-creates them)."""
    base = factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with FileLock(str(shared / "aie-building.lock")):
        yield


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A Docker engine that answers: with none running yet, the prerequisites install or start
    it (as `aie up` would)."""
    if docker_answers():
        return
    with building(tmp_path_factory):
        # Another worker may have started it meanwhile.
        if docker_answers():
            return
        work = tmp_path_factory.mktemp("engine")
        extra = write_vars(work / "vars.json", {"aie_name_prefix": PREFIX, "aie_keys_dir": str(work / "keys")})
        started = ansible_playbook("-i", "inventory/local", "playbooks/prerequisites.yml", "-e", extra, timeout=1800)
    assert started.returncode == 0, started.stdout[-3000:]


@pytest.fixture(scope="session")
def common_image(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The base image and the common layer every image is built FROM, in this engine."""
    with building(tmp_path_factory):
        prepared = ansible_playbook("-i", "inventory/local", "playbooks/prerequisites.yml", timeout=1800)
    assert prepared.returncode == 0, prepared.stdout[-3000:]


RGW_TEST_IMAGE = "aie-test/rgw:current"


def wait_for_s3(url: str, container: str, seconds: float) -> None:
    """Wait until the S3 server at url answers an anonymous listing (200); else fail with the
    tail of its container's log."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        logs = run(["docker", "logs", "--tail", "60", container], timeout=60)
        # A container that stopped will not answer: its log says why, now.
        state = run(["docker", "inspect", "-f", "{{.State.Status}}", container], timeout=60).stdout.strip()
        assert state in ("created", "running", "restarting"), f"{container} is {state or 'gone'}: " + logs.stderr
        assert time.monotonic() < deadline, logs.stdout + logs.stderr
        time.sleep(2)


@pytest.fixture(scope="session")
def rgw_test_image(common_image: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The rgw engine's image, built from the tree as it stands under a tag of the tests' own
    (the deployments' image stays as their builds left it); Docker's layer cache makes it quick
    once either was built. Its context as the deployment assembles it: the role's folder, and
    the engine's `sources` from aie/ in src/."""
    context = tmp_path_factory.mktemp("rgw-context") / "rgw"
    shutil.copytree(PROJECT / "roles/s3/docker/rgw", context)
    (context / "src").mkdir()
    shutil.copy(PROJECT / "aie" / "s3_check.py", context / "src")
    with building(tmp_path_factory):
        built = run(["docker", "build", "--build-arg", "BASE_IMAGE=aie/common:latest", "-t", RGW_TEST_IMAGE,
                     str(context)], timeout=3600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    return RGW_TEST_IMAGE


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("e2e")
    keys = work / "keys"
    # The smallest rgw store: backups and restores read its whole BlueStore file.
    settings = {"aie_name_prefix": PREFIX, "aie_keys_dir": str(keys), **ENGINE_SETTINGS,
                "s3_rgw_capacity_gib": 4, "aie_backup_local_path": str(work / "backups"),
                # Users of the inventory, with generated passwords: alice may log runs in one
                # experiment, bob in the other and is kept out of the first, carol (a laptop,
                # tests/test_laptop_client.py) in both. alice and bob sign in to JupyterHub
                # (tests/test_jupyterhub.py), whose servers are small and soon idle here.
                "mlflow_users": [{"name": "alice", "jupyterhub": True, "permissions": {"notebooks-s3": "EDIT"}},
                                 {"name": "bob", "jupyterhub": True,
                                  "permissions": {"notebooks-sftp": "EDIT", "notebooks-s3": "DENY"}},
                                 {"name": "carol", "permissions": {"notebooks-sftp": "EDIT", "notebooks-s3": "EDIT"}}],
                "jupyterhub_server_memory": "1g", "jupyterhub_server_cpus": 1.0,
                "jupyterhub_idle_timeout": 180, "jupyterhub_cull_every": 20,
                **PORTS}
    extra = write_vars(work / "vars.json", settings)
    # The test prefix belongs to the tests: containers and volumes left by an interrupted
    # earlier run (with other generated credentials) are removed first.
    leftovers = aie("down", "--purge", "--yes", "-e", extra, timeout=600)
    assert leftovers.returncode == 0, leftovers.stdout[-2000:] + leftovers.stderr[-2000:]
    with building(tmp_path_factory):
        up = aie("up", "-e", extra)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        # The tests' own MLflow clients sign in as the admin (the containers as their accounts).
        os.environ.update(mlflow_admin(keys))
        yield {"extra": extra, "keys": keys, "first_up": up, "backups": work / "backups"}
    finally:
        for name in mlflow_admin(keys):
            os.environ.pop(name, None)
        down = aie("down", "--purge", "--yes", "-e", extra, timeout=600)
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
        assert containers(PREFIX) == []


# What the browser tests keep: their screenshots.
ARTIFACTS = PROJECT / "test-artifacts"
# Every headless Chromium of the tests: without the background-networking flags its connections
# are refused by a closed network, many at a time.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900")


def changed_tasks(output: str) -> int:
    """The changed tasks of every host in ansible-playbook's recap."""
    return sum(int(n) for n in re.findall(r"changed=(\d+)", output))


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    require(found is not None, "Chromium (Debian's chromium), for the browser tests")
    assert found is not None
    return found


def trusting(ca: Path, home: Path) -> dict[str, str]:
    """The environment of a browser that trusts ca as its user would after the README's step:
    a home whose NSS database (where Chromium on Linux looks) holds the CA."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    for step in (["-N", "--empty-password"], ["-A", "-t", "C,,", "-n", "aie CA", "-i", str(ca)]):
        done = run(["certutil", "-d", f"sql:{nssdb}", *step], timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    return {"HOME": str(home)}
