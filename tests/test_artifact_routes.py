"""aie/artifact_routes.py in a real MLflow server (basic-auth, proxied artifacts), with a real
OpenSSH server as the SFTP store and a folder as the second store: each experiment's artifacts land
in the store its tag names, clients need only their MLflow account, and MLflow's permissions hold
for artifacts as for runs. (The S3 store and its multipart uploads run in the end-to-end stack.)"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PROJECT, auth_server, http_status, require
from sshd_server import SSHD, SSHTestEnv

pytestmark = pytest.mark.slow
ADMIN = ("admin", "the-admin-password-0123456789")
ALICE = ("alice", "alice-password-0123456789")
BOB = ("bob", "bob-password-0123456789abc")
TAG = "aie.artifact_store"


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require(os.access(SSHD, os.X_OK), f"the OpenSSH server {SSHD}, for the SFTP store")
    work = tmp_path_factory.mktemp("routes")
    ssh = SSHTestEnv.create(work / "sshd")
    folder = work / "second-store"
    stores = {"sftp": ssh.uri(ssh.data_dir / "by-experiment-id"), "s3": folder.as_uri()}
    env = {"AIE_ARTIFACT_STORES": json.dumps(stores), "AIE_ARTIFACT_DEFAULT_STORE": "sftp",
           "AIE_SSH_CONFIG": str(ssh.ssh_config), "MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES": "sftp",
           "AIE_SFTP_ALLOWED_HOSTS": "artifacts"}
    args = ["--serve-artifacts", "--default-artifact-root=mlflow-artifacts:/", "--artifacts-destination=aie-routed:/"]
    (work / "server").mkdir()
    try:
        with auth_server(work / "server", ADMIN, args, env) as url:
            settings = {"url": url, "admin": {"username": ADMIN[0], "password": ADMIN[1]}, "store_tag": TAG,
                        "experiments": [{"name": "team-sftp", "store": "sftp"}, {"name": "team-s3", "store": "s3"}],
                        "accounts": [
                            {"username": ALICE[0], "password": ALICE[1], "permissions": {"team-sftp": "EDIT",
                                                                                         "team-s3": "EDIT"}},
                            {"username": BOB[0], "password": BOB[1], "permissions": {"team-sftp": "DENY",
                                                                                     "team-s3": "DENY"}}]}
            assert setup(settings)["changed"][:2] == ["experiment team-sftp created, artifacts on sftp",
                                                       "experiment team-s3 created, artifacts on s3"]
            ids = {name: get(url, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}", ADMIN)
                   ["experiment"]["experiment_id"] for name in ("team-sftp", "team-s3")}
            yield {"url": url, "ssh": ssh, "folder": folder, "ids": ids, "settings": settings}
    finally:
        ssh.close()


def setup(settings: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "aie.mlflow_setup"], input=json.dumps(settings), cwd=PROJECT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def get(url: str, path: str, account: tuple[str, str]) -> dict[str, Any]:
    token = base64.b64encode(":".join(account).encode()).decode()
    request = urllib.request.Request(url + path, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - the test server
        result: dict[str, Any] = json.loads(answer.read())
        return result


LOG = r"""
import hashlib, json, os, sys, tempfile
import mlflow
out = {}
for name in sys.argv[1:]:
    mlflow.set_experiment(name)
    with mlflow.start_run() as run:
        folder = tempfile.mkdtemp()
        data = os.urandom(3 * 1024 * 1024 + 17)
        with open(os.path.join(folder, "weights.bin"), "wb") as handle:
            handle.write(data)
        os.makedirs(os.path.join(folder, "many"))
        for i in range(20):
            with open(os.path.join(folder, "many", f"part-{i}.txt"), "w") as handle:
                handle.write(f"part {i}\n")
        mlflow.log_artifact(os.path.join(folder, "weights.bin"), artifact_path="model")
        mlflow.log_artifacts(os.path.join(folder, "many"), artifact_path="many")
        back = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model/weights.bin")
        with open(back, "rb") as handle:
            read = handle.read()
        listed = sorted(f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "many"))
        out[name] = {"run_id": run.info.run_id, "sha256": hashlib.sha256(data).hexdigest(),
                     "read_back": hashlib.sha256(read).hexdigest(), "listed": len(listed),
                     "artifact_uri": mlflow.get_artifact_uri()}
print(json.dumps(out))
"""


def as_client(url: str, account: tuple[str, str], script: str, *args: str,
              extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A client that holds only an MLflow account: no ssh config, no storage keys."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AWS_", "MLFLOW_", "AIE_"))}
    env.update(MLFLOW_TRACKING_URI=url, MLFLOW_TRACKING_USERNAME=account[0], MLFLOW_TRACKING_PASSWORD=account[1],
               AIE_SSH_CONFIG=os.devnull, **(extra or {}))
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def logged(routed: dict[str, Any]) -> dict[str, Any]:
    # Files above this size go through MLflow's multipart proxy: the folder store has none, and
    # the client falls back to one upload through the server.
    result = as_client(routed["url"], ALICE, LOG, "team-sftp", "team-s3",
                       extra={"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
                              "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(1024 * 1024)})
    assert result.returncode == 0, result.stderr[-3000:]
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_experiment_is_proxied_and_tagged_with_its_store(routed: dict[str, Any]) -> None:
    for name, store in (("team-sftp", "sftp"), ("team-s3", "s3")):
        experiment = get(routed["url"], f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}",
                         ADMIN)["experiment"]
        assert experiment["artifact_location"] == f"mlflow-artifacts:/{routed['ids'][name]}"
        assert {tag["key"]: tag["value"] for tag in experiment["tags"]}[TAG] == store
    assert setup(routed["settings"])["changed"] == []


def test_a_person_logs_and_reads_back_through_the_server_into_the_experiments_store(
        routed: dict[str, Any], logged: dict[str, Any]) -> None:
    roots = {"team-sftp": routed["ssh"].data_dir / "by-experiment-id", "team-s3": routed["folder"]}
    for name, entry in logged.items():
        experiment = routed["ids"][name]
        assert entry["artifact_uri"] == f"mlflow-artifacts:/{experiment}/{entry['run_id']}/artifacts"
        assert entry["read_back"] == entry["sha256"]
        assert entry["listed"] == 20
        # On the store itself, and only there.
        landed = roots[name] / experiment / entry["run_id"] / "artifacts"
        assert sha256(landed / "model" / "weights.bin") == entry["sha256"]
        assert len(list((landed / "many").iterdir())) == 20
        other = roots["team-s3" if name == "team-sftp" else "team-sftp"] / experiment
        assert not other.exists()


def test_runs_are_by_the_person_who_logged_them(routed: dict[str, Any], logged: dict[str, Any]) -> None:
    for entry in logged.values():
        run = get(routed["url"], f"/api/2.0/mlflow/runs/get?run_id={entry['run_id']}", ADMIN)["run"]
        assert run["info"]["user_id"] == ALICE[0]


def test_a_person_denied_the_experiment_is_refused_its_runs_and_artifacts(
        routed: dict[str, Any], logged: dict[str, Any]) -> None:
    url = routed["url"]
    for name, entry in logged.items():
        path = f"{routed['ids'][name]}/{entry['run_id']}/artifacts"
        proxied = f"{url}/api/2.0/mlflow-artifacts/artifacts"
        answers = {
            "run": http_status(f"{url}/api/2.0/mlflow/runs/get?run_id={entry['run_id']}", BOB),
            "download": http_status(f"{proxied}/{path}/model/weights.bin", BOB),
            "list": http_status(f"{proxied}?path={path}/many", BOB),
            "ui download": http_status(f"{url}/get-artifact?path=model/weights.bin&run_uuid={entry['run_id']}", BOB),
        }
        assert answers == {"run": 403, "download": 403, "list": 403, "ui download": 403}, name
        assert http_status(f"{proxied}/{path}/model/weights.bin", ALICE) == 200
    # Logging into a denied experiment is refused before anything is stored.
    result = as_client(url, BOB, LOG, "team-sftp")
    assert result.returncode != 0 and "403" in result.stderr, result.stderr[-2000:]


def test_a_path_that_names_no_experiment_is_refused_even_to_the_admin(routed: dict[str, Any]) -> None:
    proxied = f"{routed['url']}/api/2.0/mlflow-artifacts/artifacts"
    assert http_status(f"{proxied}/shared/weights.bin", ADMIN) == 400
    assert not any(routed["ssh"].data_dir.rglob("shared"))


def test_a_retagged_experiment_is_put_back_by_setup(routed: dict[str, Any]) -> None:
    token = base64.b64encode(":".join(ADMIN).encode()).decode()
    body = json.dumps({"experiment_id": routed["ids"]["team-s3"], "key": TAG, "value": "sftp"}).encode()
    request = urllib.request.Request(f"{routed['url']}/api/2.0/mlflow/experiments/set-experiment-tag", data=body,
                                     headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30):  # noqa: S310 - the test server
        pass
    assert setup(routed["settings"])["changed"] == ["experiment team-s3: artifacts on s3"]
    assert setup(routed["settings"])["changed"] == []


def test_the_server_reads_no_sftp_host_but_the_deployments(routed: dict[str, Any]) -> None:
    """A location a client gives may name any host: the server refuses to connect to one that is
    not the deployment's SFTP server (MLflow's host policy, which aie's SFTP store takes over)."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        url = routed["url"]
        token = base64.b64encode(":".join(ADMIN).encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            request = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers=headers)
            with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - the test server
                result: dict[str, Any] = json.loads(answer.read())
                return result

        experiment = post("/api/2.0/mlflow/experiments/create",
                          {"name": "elsewhere", "artifact_location": f"sftp://127.0.0.1:{port}/srv"})["experiment_id"]
        run = post("/api/2.0/mlflow/runs/create", {"experiment_id": experiment})["run"]["info"]["run_id"]
        request = urllib.request.Request(f"{url}/get-artifact?path=weights.bin&run_uuid={run}", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)  # noqa: S310 - the test server
        assert refused.value.code == 400
        assert "AIE_SFTP_ALLOWED_HOSTS" in refused.value.read().decode()
        with pytest.raises(BlockingIOError):
            listener.accept()
