"""aie/mlflow_setup.py against a real MLflow server with its basic-auth app (started from this
virtualenv): experiments, accounts and permissions are created once, corrected when they
differ, reported in check mode without a change, and bad settings are refused by name."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PROJECT, auth_server, free_port, http_status

pytestmark = pytest.mark.slow
ADMIN = ("admin", "the-admin-password-0123456789")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with auth_server(tmp_path_factory.mktemp("mlflow-auth"), ADMIN) as url:
        yield url


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


def test_an_experiment_at_an_earlier_release_s_location_is_to_be_moved_by_the_upgrade(server: str) -> None:
    # Made as an earlier release made notebooks-s3: at a direct location. The upgrade's database
    # step moves it before the new server starts (aie.mlflow_db); check mode, which replaces no
    # container, says it would; a real run that finds it still there names the way out.
    made = setup(server, experiments=[{"name": "team-old", "artifact_location": "s3://old/team-old"}])
    assert made.returncode == 0, made.stderr
    wanted = {"experiments": [{"name": "team-old", "store": "s3", "earlier_location": "s3://old/team-old"}],
              "store_tag": "aie.artifact_store"}
    assert changes(setup(server, check=True, **wanted)) == [
        "experiment team-old: artifacts through MLflow now (was s3://old/team-old)"]
    refused = setup(server, **wanted)
    assert refused.returncode == 1
    assert "Experiment team-old is at the direct location an earlier release made it at" in refused.stderr
    assert "Stop the tracking server's container" in refused.stderr


def test_a_permission_on_an_unlisted_experiment_is_refused_by_name(server: str) -> None:
    wanted = {**CLIENT, "permissions": {"team-z": "EDIT"}}
    result = setup(server, experiments=EXPERIMENTS, accounts=[wanted])
    assert result.returncode == 1
    assert "notebooks is given EDIT on experiment team-z" in result.stderr


def call(url: str, account: tuple[str, str], body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON answer) of one call as account: a POST with body, else a GET."""
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers={
        "Authorization": "Basic " + base64.b64encode(":".join(account).encode()).decode(),
        "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - the test server
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {}


def test_a_user_denied_an_experiment_is_refused_its_runs_and_artifacts(server: str) -> None:
    outsider = {"username": "outsider", "password": "outsider-password-0123", "admin": False,
                "permissions": {"team-a": "DENY"}}
    wanted = {"experiments": EXPERIMENTS, "accounts": [outsider]}
    assert changes(setup(server, **wanted)) == ["account outsider created", "outsider given DENY on experiment team-a"]
    assert changes(setup(server, **wanted)) == []
    api = f"{server}/api/2.0/mlflow"
    ids = {e["name"]: call(f"{api}/experiments/get-by-name?experiment_name={e['name']}", ADMIN)[1]["experiment"]
           ["experiment_id"] for e in EXPERIMENTS}
    runs = {}
    for name, experiment_id in ids.items():
        status, answer = call(f"{api}/runs/create", ADMIN, {"experiment_id": experiment_id})
        assert status == 200, answer
        runs[name] = answer["run"]["info"]["run_id"]
        assert call(f"{api}/runs/log-metric", ADMIN, {"run_id": runs[name], "key": "loss", "value": 0.5,
                                                      "timestamp": 0, "step": 0})[0] == 200
    account = (outsider["username"], outsider["password"])
    denied = {
        "the experiment": f"{api}/experiments/get?experiment_id={ids['team-a']}",
        "its run": f"{api}/runs/get?run_id={runs['team-a']}",
        "its metrics": f"{api}/metrics/get-history?run_id={runs['team-a']}&metric_key=loss",
        "its artifacts": f"{api}/artifacts/list?run_id={runs['team-a']}",
        "an artifact": f"{server}/get-artifact?run_id={runs['team-a']}&path=model/MLmodel",
    }
    assert {what: call(url, account)[0] for what, url in denied.items()} == dict.fromkeys(denied, 403)
    status, found = call(f"{api}/runs/search", account, {"experiment_ids": [ids["team-a"]]})
    assert status == 403 or not found.get("runs"), found
    # The same account reads the other experiment (default READ): the refusal is the grant's.
    assert call(f"{api}/runs/get?run_id={runs['team-b']}", account)[0] == 200
    assert call(f"{api}/metrics/get-history?run_id={runs['team-b']}&metric_key=loss", account)[0] == 200


def test_no_permissions_is_refused_with_a_line_that_names_deny(server: str) -> None:
    wanted = {**CLIENT, "permissions": {"team-a": "NO_PERMISSIONS"}}
    result = setup(server, experiments=EXPERIMENTS, accounts=[wanted])
    assert result.returncode == 1
    assert "notebooks is given NO_PERMISSIONS on team-a" in result.stderr and "use DENY" in result.stderr


def test_a_server_that_does_not_answer_is_named(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = setup(url, experiments=EXPERIMENTS)
    assert result.returncode == 1
    assert f"MLflow does not answer at {url}" in result.stderr


def test_a_retired_account_is_deleted_and_no_other(server: str) -> None:
    """A person removed from mlflow_users (retired by the role) can no longer sign in; an account
    made in the UI, and the listed ones, are kept."""
    leaving = {"username": "leaving", "password": "leaving-password-0123", "admin": False,
               "permissions": {"team-a": "EDIT"}}
    staying = {"username": "staying", "password": "staying-password-0123", "admin": False, "permissions": {}}
    assert changes(setup(server, experiments=EXPERIMENTS, accounts=[leaving, staying]))[:2] == [
        "account leaving created", "leaving given EDIT on experiment team-a"]
    ui_made = ("made-in-the-ui", "made-in-the-ui-password-01")
    assert http_status(f"{server}/api/2.0/mlflow/users/create", ADMIN,
                       {"username": ui_made[0], "password": ui_made[1]}) == 200
    probe = f"{server}/api/2.0/mlflow/users/get?username="
    wanted = {"experiments": EXPERIMENTS, "accounts": [staying], "retired": ["leaving", "never-made"]}
    assert changes(setup(server, check=True, **wanted)) == ["account leaving deleted"]
    assert http_status(probe + "leaving", (leaving["username"], leaving["password"])) == 200
    assert changes(setup(server, **wanted)) == ["account leaving deleted"]
    assert changes(setup(server, **wanted)) == []
    assert http_status(probe + "leaving", (leaving["username"], leaving["password"])) == 401
    assert http_status(probe + "leaving", ADMIN) == 404
    assert http_status(probe + ui_made[0], ui_made) == 200
    assert http_status(probe + "staying", (staying["username"], staying["password"])) == 200
    # Made again, the account has no permission left from before.
    assert changes(setup(server, experiments=EXPERIMENTS, accounts=[{**leaving, "permissions": {}}])) == [
        "account leaving created"]


def test_retiring_a_listed_account_or_the_admin_is_refused_by_name(server: str) -> None:
    for name, accounts in (("staying", [{"username": "staying", "password": "staying-password-0123"}]),
                           ("admin", [])):
        result = setup(server, experiments=EXPERIMENTS, accounts=accounts, retired=[name])
        assert result.returncode == 1
        assert f"account {name} is both retired and in use" in result.stderr
    assert http_status(f"{server}/api/2.0/mlflow/users/get?username=admin", ADMIN) == 200
