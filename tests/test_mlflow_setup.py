"""aie/mlflow_setup.py against a real MLflow server with its basic-auth app (started from this
virtualenv): experiments, accounts and permissions are created once, corrected when they
differ, reported in check mode without a change, and bad settings are refused by name."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import BIN, PROJECT, http_status

pytestmark = pytest.mark.slow
ADMIN = ("admin", "the-admin-password-0123456789")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("mlflow-auth")
    config = work / "basic_auth.ini"
    config.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{work}/basic_auth.db\n"
                      f"admin_username = {ADMIN[0]}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN[1],
               MLFLOW_FLASK_SERVER_SECRET_KEY="a-secret-key-for-the-test-server-0123")
    log = (work / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", f"--port={port}",
         "--workers", "1", f"--backend-store-uri=sqlite:///{work}/mlflow.db"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if http_status(url + "/health", None) == 200:
                break
            assert process.poll() is None, (work / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("MLflow did not answer within 60 s: " + (work / "server.log").read_text()[-3000:])
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def setup(url: str, check: bool = False, admin: tuple[str, str] = ADMIN,
          **settings: Any) -> subprocess.CompletedProcess[str]:
    given = {"url": url, "admin": {"username": admin[0], "password": admin[1]}, "check": check, **settings}
    return subprocess.run([sys.executable, "-m", "aie.mlflow_setup"], input=json.dumps(given), cwd=PROJECT,
                          capture_output=True, text=True, timeout=120, check=False)


def changes(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    changed: list[str] = json.loads(result.stdout)["changed"]
    return changed


EXPERIMENTS = [{"name": "team-a", "artifact_location": "s3://bucket/team-a"},
               {"name": "team-b", "artifact_location": "s3://bucket/team-b"}]
CLIENT = {"username": "notebooks", "password": "notebooks-password-0123", "admin": False,
          "permissions": {"team-a": "EDIT", "team-b": "EDIT"}}
BOSS = {"username": "boss", "password": "boss-password-0123456789", "admin": True, "permissions": {}}


def test_setup_creates_once_and_reports_what_it_would_do_in_check_mode(server: str) -> None:
    wanted = {"experiments": EXPERIMENTS, "accounts": [CLIENT, BOSS]}
    would = changes(setup(server, check=True, **wanted))
    assert would == ["experiment team-a created", "experiment team-b created", "account notebooks created",
                     "notebooks given EDIT on experiment team-a", "notebooks given EDIT on experiment team-b",
                     "account boss created", "account boss made admin"]
    # Check mode changed nothing: the account does not exist yet.
    notebooks, boss = (CLIENT["username"], CLIENT["password"]), (BOSS["username"], BOSS["password"])
    assert http_status(f"{server}/api/2.0/mlflow/users/get?username=notebooks", notebooks) == 401
    assert changes(setup(server, **wanted)) == would
    assert changes(setup(server, **wanted)) == []
    assert changes(setup(server, check=True, **wanted)) == []
    # What the accounts may now do, asked as they would.
    runs = f"{server}/api/2.0/mlflow/runs/create"
    ids = [json.loads(urllib.request.urlopen(urllib.request.Request(  # noqa: S310
        f"{server}/api/2.0/mlflow/experiments/get-by-name?experiment_name={e['name']}",
        headers={"Authorization": "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode()}), timeout=30)
        .read())["experiment"]["experiment_id"] for e in EXPERIMENTS]
    assert http_status(runs, notebooks, {"experiment_id": ids[0]}) == 200
    create = f"{server}/api/2.0/mlflow/users/create"
    assert http_status(create, notebooks, {"username": "x", "password": "x" * 20}) == 403
    assert http_status(create, boss, {"username": "carol", "password": "c" * 20}) == 200


def test_a_changed_password_or_permission_is_set_again(server: str) -> None:
    rotated = {**CLIENT, "password": "a-new-notebooks-password-42", "permissions": {"team-a": "EDIT", "team-b": "READ"}}
    wanted = {"experiments": EXPERIMENTS, "accounts": [rotated]}
    assert changes(setup(server, **wanted)) == ["password of account notebooks updated",
                                                "notebooks given READ on experiment team-b"]
    assert changes(setup(server, **wanted)) == []
    probe = f"{server}/api/2.0/mlflow/users/get?username=notebooks"
    assert http_status(probe, ("notebooks", rotated["password"])) == 200
    assert http_status(probe, ("notebooks", CLIENT["password"])) == 401


def test_a_wrong_admin_password_is_refused_by_name(server: str) -> None:
    result = setup(server, admin=("admin", "not-the-admin-password"), experiments=EXPERIMENTS)
    assert result.returncode == 1
    assert "admin account admin" in result.stderr and "aie_mlflow_admin_password" in result.stderr
    assert "not-the-admin-password" not in result.stderr + result.stdout


def test_an_experiment_that_moved_is_refused_by_name(server: str) -> None:
    result = setup(server, experiments=[{"name": "team-a", "artifact_location": "sftp://elsewhere/team-a"}])
    assert result.returncode == 1
    assert "Experiment team-a already exists with artifact location s3://bucket/team-a" in result.stderr


def test_a_permission_on_an_unlisted_experiment_is_refused_by_name(server: str) -> None:
    wanted = {**CLIENT, "permissions": {"team-z": "EDIT"}}
    result = setup(server, experiments=EXPERIMENTS, accounts=[wanted])
    assert result.returncode == 1
    assert "notebooks is given EDIT on experiment team-z" in result.stderr


def test_a_server_that_does_not_answer_is_named(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = setup(url, experiments=EXPERIMENTS)
    assert result.returncode == 1
    assert f"MLflow does not answer at {url}" in result.stderr
