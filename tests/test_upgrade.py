"""Upgrade drill: a deployment made the previous way is brought up to date by `aie up`.

The previous way is release PREVIOUS of this project (taken from its git history): MLflow with no
accounts over plain HTTP, one S3 account for everyone, every service as root. Runs, a registered
model with an alias, and artifacts on SFTP and S3 (one above S3's 8 MiB multipart threshold) are
logged into it; then today's `aie up` deploys over it (accounts, HTTPS, the S3 client account,
non-root services) and everything is read back: every parameter, metric step and artifact byte.
Every service but serving takes part (it runs only once a model is registered as one). The old
JupyterLab saves a notebook in its folder; after the upgrade erin, a person given JupyterHub, signs
in, finds it read-only in her own server's shared folder, and reads the old runs and their
artifacts through MLflow with her account alone.

The previous deployment runs the previous minor release of MLflow (PREVIOUS_MLFLOW), whose
tracking database is a schema behind today's pin: `aie up` backs it up, stops the old server,
runs MLflow's migrations and starts the new one (roles/mlflow/tasks/schema.yml); then an older
release than the one running is refused before anything changes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

import hub_client
from conftest import (
    BIN,
    ENGINE,
    PINNED_MLFLOW,
    PREVIOUS_MLFLOW,
    aie,
    building,
    containers,
    earlier_release,
    generated_secrets,
    http_status,
    mlflow_admin,
    run,
    secrets_in,
    tls_ca,
    write_local_inventory,
    write_vars,
)

# The last release before MLflow accounts, HTTPS, the S3 client account and non-root containers.
PREVIOUS = "29ef9ff"
PREFIX = "aieup"
PORTS = {"aie_mlflow_port": 25500, "aie_sftp_port": 22222, "aie_s3_port": 29000, "aie_jupyterlab_port": 28888}
HUB = "https://127.0.0.1:28000"
MLFLOW_URL = f"https://127.0.0.1:{PORTS['aie_mlflow_port']}"
# Every service but serving (it runs only once a model is registered as one). The inventory is
# the previous release's, old names included: the S3 server's group minio (s3 today), and
# minio_engine and minio_rgw_capacity_gib among the settings.
GROUPS = ("mlflow", "sftp", "minio", "jupyterlab", "database")

# Run inside the MLflow container: log two runs (SFTP and S3), register a model with an alias,
# and print what was logged. MiB-sized artifacts, one of them above S3's multipart threshold.
LOG_RUNS = r"""
import hashlib, json, os, tempfile
import mlflow
out = {}
for name, size in (("notebooks-sftp", 3 << 20), ("notebooks-s3", 9 << 20)):
    mlflow.set_experiment(name)
    with mlflow.start_run() as run:
        mlflow.log_param("learning_rate", 0.01)
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        path = os.path.join(tempfile.mkdtemp(), "weights.bin")
        data = os.urandom(size)
        with open(path, "wb") as handle:
            handle.write(data)
        mlflow.log_artifact(path, artifact_path="model")
        out[name] = {"run_id": run.info.run_id, "sha256": hashlib.sha256(data).hexdigest()}
client = mlflow.MlflowClient()
client.create_registered_model("upgrade-drill")
version = client.create_model_version("upgrade-drill", f"runs:/{out['notebooks-s3']['run_id']}/model",
                                      out["notebooks-s3"]["run_id"])
client.set_registered_model_alias("upgrade-drill", "champion", version.version)
print(json.dumps(out))
"""

# Run inside the upgraded MLflow container as its user: download each run's artifact through
# MLflow (the SFTP store, S3 with the client account and the CA) and print its sha256.
READ_BACK = r"""
import hashlib, json, sys
import mlflow
out = {}
for name, run_id in json.loads(sys.argv[1]).items():
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/weights.bin")
    out[name] = hashlib.sha256(open(path, "rb").read()).hexdigest()
print(json.dumps(out))
"""


# A notebook the old shared JupyterLab saved in its folder before the upgrade.
SAVED_BEFORE = json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["Kept by the upgrade"]}],
                           "metadata": {}, "nbformat": 4, "nbformat_minor": 5})

# Run in erin's server, with her MLflow account only (her credentials file, written from the hub):
# each old run's metric steps, and its artifact through MLflow's server (the UI's download, which
# reads the run's sftp:// or s3:// location with the server's accounts); printed with its sha256.
READ_AS_PERSON = r"""
import hashlib, json, os, sys
import requests
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import read_mlflow_creds
creds = read_mlflow_creds()
out = {}
for name, run_id in json.loads(sys.argv[1]).items():
    steps = [m.step for m in MlflowClient().get_metric_history(run_id, "loss")]
    got = requests.get(os.environ["MLFLOW_TRACKING_URI"] + "/get-artifact",
                       params={"run_id": run_id, "path": "model/weights.bin"},
                       auth=(creds.username, creds.password), timeout=300)
    got.raise_for_status()
    out[name] = {"user": creds.username, "steps": sorted(steps), "sha256": hashlib.sha256(got.content).hexdigest()}
print(json.dumps(out))
"""

# Run on the controller as a laptop would, with an MLflow account and the CA only (no storage keys,
# an empty home): log a run to each experiment through MLflow and print where it went.
LOG_THROUGH_MLFLOW = r"""
import hashlib, json, os, tempfile
import mlflow
out = {}
for name in ("notebooks-sftp", "notebooks-s3"):
    experiment = mlflow.set_experiment(name)
    with mlflow.start_run() as run:
        path = os.path.join(tempfile.mkdtemp(), "weights.bin")
        data = os.urandom(2 << 20)
        with open(path, "wb") as handle:
            handle.write(data)
        mlflow.log_artifact(path, artifact_path="model")
        out[name] = {"run_id": run.info.run_id, "experiment_id": experiment.experiment_id,
                     "location": experiment.artifact_location, "artifact_uri": run.info.artifact_uri,
                     "sha256": hashlib.sha256(data).hexdigest()}
print(json.dumps(out))
"""

# Run inside the MLflow container, which holds the storage accounts: read each run's artifact
# straight from the store its experiment's tag names, where the server's router put it
# (AIE_ARTIFACT_STORES: store -> its by-experiment-id folder), and print its sha256.
READ_FROM_THE_STORE = r"""
import hashlib, json, os, sys
import mlflow
stores = json.loads(os.environ["AIE_ARTIFACT_STORES"])
out = {}
for name, (store, experiment_id, run_id) in json.loads(sys.argv[1]).items():
    uri = f"{stores[store]}/{experiment_id}/{run_id}/artifacts/model/weights.bin"
    out[name] = hashlib.sha256(open(mlflow.artifacts.download_artifacts(artifact_uri=uri), "rb").read()).hexdigest()
print(json.dumps(out))
"""


def mlflow_exec(*command: str, env: dict[str, str], user: str | None = None) -> subprocess.CompletedProcess[str]:
    options = [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]
    return run(["docker", "exec", *(["--user", user] if user else []), *options, f"{PREFIX}-mlflow", *command],
               timeout=600)


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("upgrade")
    keys = work / "keys"
    inventory = write_local_inventory(work / "inventory.yml", GROUPS)
    # MLflow stays on SQLite, where the previous release kept its runs (moved by test_the_move_...).
    # JupyterLab's notebooks in a folder of the user's, as both releases let one choose.
    settings = {"aie_name_prefix": PREFIX, "aie_keys_dir": str(keys), "minio_engine": ENGINE,
                "minio_rgw_capacity_gib": 4, "aie_backup_local_path": str(work / "backups"),
                "aie_mlflow_backend": "sqlite", "jupyterlab_notebooks_dir": str(work / "notebooks"), **PORTS}
    # Today's settings add a person with JupyterHub (the previous release had neither).
    extra = write_vars(work / "vars.json", {**settings, "aie_jupyterhub_port": 28000, "jupyterhub_server_memory": "1g",
                                            "mlflow_users": [{"name": "erin", "jupyterhub": True}]})
    # Down with PostgreSQL chosen: its container and volume, left by an interrupted run, go too.
    everything = ["-i", str(inventory), "-e", extra, "-e", "aie_mlflow_backend=postgresql"]
    leftovers = aie("down", "--purge", "--yes", *everything, timeout=600)
    assert leftovers.returncode == 0, leftovers.stdout[-2000:] + leftovers.stderr[-2000:]

    previous = work / "previous"
    old_settings = {**settings, **earlier_release(PREVIOUS, previous)}
    with building(tmp_path_factory):
        old_up = run([str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml",
                      "-e", write_vars(work / "previous-vars.json", old_settings)],
                     timeout=3600, cwd=previous, extra_env={"ANSIBLE_CONFIG": str(previous / "ansible.cfg")})
    try:
        assert old_up.returncode == 0, old_up.stdout[-3000:] + old_up.stderr[-3000:]
        logged = mlflow_exec("python", "-c", LOG_RUNS, env={"MLFLOW_TRACKING_URI": "http://localhost:5000"})
        assert logged.returncode == 0, logged.stderr[-3000:]
        saved = run(["docker", "exec", "-i", f"{PREFIX}-jupyterlab", "sh", "-c",
                     "cat > /home/aie/work/before-the-upgrade.ipynb"], input=SAVED_BEFORE, timeout=60)
        assert saved.returncode == 0, saved.stderr
        started = time.monotonic()
        with building(tmp_path_factory):
            up = aie("up", "-i", str(inventory), "-e", extra)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        print(f"upgrade from {PREVIOUS} (MLflow {PREVIOUS_MLFLOW}) to MLflow {PINNED_MLFLOW}: "
              f"aie up {time.monotonic() - started:.0f} s")
        yield {"keys": keys, "logged": json.loads(logged.stdout.strip().splitlines()[-1]), "up": up,
               "inventory": inventory, "vars": work / "vars.json", "extra": extra}
    finally:
        down = aie("down", "--purge", "--yes", *everything, timeout=600)
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
        assert containers(PREFIX) == []


def test_runs_metrics_and_models_survive_the_upgrade(upgraded: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in mlflow_admin(upgraded["keys"]).items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(tracking_uri=MLFLOW_URL)
    for name, logged in upgraded["logged"].items():
        run_ = client.get_run(logged["run_id"])
        assert run_.data.params == {"learning_rate": "0.01"}, name
        history = client.get_metric_history(logged["run_id"], "loss")
        assert sorted((m.step, m.value) for m in history) == [(step, 1.0 / (step + 1)) for step in range(5)], name
        assert client.get_experiment(run_.info.experiment_id).name == name
    version = client.get_model_version_by_alias("upgrade-drill", "champion")
    assert version.run_id == upgraded["logged"]["notebooks-s3"]["run_id"]


def test_artifacts_read_back_byte_for_byte_with_accounts_and_https(upgraded: dict[str, Any]) -> None:
    runs = {name: logged["run_id"] for name, logged in upgraded["logged"].items()}
    env = {**mlflow_admin(upgraded["keys"]), "MLFLOW_TRACKING_URI": "https://localhost:5000",
           "MLFLOW_TRACKING_SERVER_CERT_PATH": "/etc/aie/tls/ca.pem", "HOME": "/home/aie", "USER": "aie"}
    read = mlflow_exec("python", "-c", READ_BACK, json.dumps(runs), env=env, user="10001:10001")
    assert read.returncode == 0, read.stderr[-3000:]
    assert json.loads(read.stdout.strip().splitlines()[-1]) == {
        name: logged["sha256"] for name, logged in upgraded["logged"].items()}


def test_a_persons_server_shows_the_old_notebooks_and_reads_the_old_runs(upgraded: dict[str, Any]) -> None:
    """The shared JupyterLab's notebooks stay in its folder, which every person's server shows
    read-only at ~/shared; the old runs (artifacts at sftp:// and s3://) read with an account alone."""
    secret = upgraded["keys"] / "secrets" / "mlflow_users" / "erin"
    session, answer = hub_client.sign_in(HUB, str(tls_ca(upgraded["keys"])), "erin", secret.read_text().split()[0])
    assert answer.status_code == 302, (answer.status_code, answer.text[:500])
    hub_client.start_server(session, HUB, "erin")
    server = f"{PREFIX}-jupyterhub-user-erin"
    shown = run(["docker", "exec", server, "cat", "/home/aie/shared/before-the-upgrade.ipynb"], timeout=60)
    assert shown.stdout == SAVED_BEFORE, shown.stderr
    changed = run(["docker", "exec", server, "sh", "-c", "echo >> /home/aie/shared/before-the-upgrade.ipynb"],
                  timeout=60)
    assert changed.returncode != 0 and "Read-only file system" in changed.stderr, changed.stderr
    runs = {name: logged["run_id"] for name, logged in upgraded["logged"].items()}
    read = run(["docker", "exec", server, "python", "-c", READ_AS_PERSON, json.dumps(runs)], timeout=600)
    assert read.returncode == 0, read.stderr[-3000:]
    assert json.loads(read.stdout.strip().splitlines()[-1]) == {
        name: {"user": "erin", "steps": list(range(5)), "sha256": logged["sha256"]}
        for name, logged in upgraded["logged"].items()}
def test_the_upgrade_moves_aie_s_experiments_behind_mlflow_for_new_runs(
        upgraded: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The previous release made them at direct locations: the upgrade moved them behind the
    # server, said so, and a second `aie up` has nothing to move.
    notes = [line for line in upgraded["up"].stderr.splitlines() if "artifacts through MLflow now" in line]
    assert [re.sub(r"\(was \w+://[^)]*/", "(was …/", line) for line in notes] == [
        f"aie: note (localhost): experiment {name}: artifacts through MLflow now (was …/{name})"
        for name in ("notebooks-sftp", "notebooks-s3")], upgraded["up"].stderr[-3000:]
    assert notes[0].split("(was ")[1].startswith("sftp://") and notes[1].split("(was ")[1].startswith("s3://"), notes
    # A laptop's client: an MLflow account and the CA, no storage keys, an empty home.
    home = tmp_path_factory.mktemp("laptop")
    env = {"PATH": str(BIN), "HOME": str(home), "LANG": "C.UTF-8", "MLFLOW_TRACKING_URI": MLFLOW_URL,
           **mlflow_admin(upgraded["keys"])}
    logged = subprocess.run([str(BIN / "python"), "-c", LOG_THROUGH_MLFLOW], env=env, cwd=home, capture_output=True,
                            text=True, timeout=600, check=False)
    assert logged.returncode == 0, logged.stderr[-3000:]
    new = json.loads(logged.stdout.strip().splitlines()[-1])
    for name, made in new.items():
        assert made["location"] == f"mlflow-artifacts:/{made['experiment_id']}", name
        assert made["artifact_uri"] == f"{made['location']}/{made['run_id']}/artifacts", name
    # Each landed in its experiment's store, byte for byte.
    where = {name: (name.split("-")[1], made["experiment_id"], made["run_id"]) for name, made in new.items()}
    read = mlflow_exec("python", "-c", READ_FROM_THE_STORE, json.dumps(where), env={}, user="10001:10001")
    assert read.returncode == 0, read.stderr[-3000:]
    assert json.loads(read.stdout.strip().splitlines()[-1]) == {name: made["sha256"] for name, made in new.items()}
    # The runs logged before keep their direct artifact URIs (test_artifacts_read_back_... reads them).
    for name, value in mlflow_admin(upgraded["keys"]).items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(tracking_uri=MLFLOW_URL)
    for name, logged_before in upgraded["logged"].items():
        assert not client.get_run(logged_before["run_id"]).info.artifact_uri.startswith("mlflow-artifacts:"), name
    again = aie("up", "-i", str(upgraded["inventory"]), "-e", upgraded["extra"], timeout=1200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "aie: site.yml done, changed=0" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    assert "artifacts through MLflow now" not in again.stderr


def test_the_upgrade_reads_the_old_names_and_adopts_the_s3_store(upgraded: dict[str, Any]) -> None:
    # Read as today's names, with a note that says which to rename; the S3 server's container,
    # <prefix>-minio before, is <prefix>-s3 on the same data volume (whose objects the artifact
    # test reads back).
    notes = [line for line in upgraded["up"].stderr.splitlines() if "Deprecated names" in line]
    assert notes == ["aie: note (localhost): Deprecated names, read for this release only: group minio, minio_engine, "
                     "minio_rgw_capacity_gib. Rename them group s3, s3_engine, s3_rgw_capacity_gib in your inventory."]
    names = containers(PREFIX)
    assert f"{PREFIX}-s3" in names and f"{PREFIX}-minio" not in names
    mounts = json.loads(run(["docker", "inspect", "-f", "{{json .Mounts}}", f"{PREFIX}-s3"], timeout=60).stdout)
    assert f"{PREFIX}-minio-data" in [mount.get("Name") for mount in mounts]
    assert run(["docker", "volume", "inspect", f"{PREFIX}-minio-config"], timeout=60).returncode != 0


def test_the_upgrade_turns_on_accounts_https_and_a_service_user(upgraded: dict[str, Any]) -> None:
    ca = tls_ca(upgraded["keys"])
    search = "/api/2.0/mlflow/experiments/search?max_results=10"
    assert http_status(MLFLOW_URL + search, cafile=ca) == 401
    password = mlflow_admin(upgraded["keys"])["MLFLOW_TRACKING_PASSWORD"]
    assert http_status(MLFLOW_URL + search, account=("admin", password), cafile=ca) == 200
    assert http_status(f"http://127.0.0.1:{PORTS['aie_mlflow_port']}/health") == 0
    users = run(["docker", "exec", f"{PREFIX}-mlflow", "sh", "-c",
                 "for p in /proc/[0-9]*; do awk '/^Uid/{print $2}' $p/status; done"]).stdout.split()
    assert "10001" in users, users


def test_the_upgrade_takes_every_secret_out_of_the_containers_configuration(upgraded: dict[str, Any]) -> None:
    # The previous release gave MLflow the admin password and the S3 keys in its environment.
    assert {"secrets/mlflow_admin_password", "secrets/s3_client_secret_key"} <= set(generated_secrets(upgraded["keys"]))
    for name in containers(PREFIX):
        inspected = run(["docker", "inspect", name])
        assert inspected.returncode == 0, inspected.stderr
        assert secrets_in(inspected.stdout, upgraded["keys"]) == [], name


def test_the_previous_minor_is_the_one_before_the_pin() -> None:
    pinned, previous = (tuple(map(int, v.split(".")[:2])) for v in (PINNED_MLFLOW, PREVIOUS_MLFLOW))
    assert previous == (pinned[0], pinned[1] - 1), f"PREVIOUS_MLFLOW: the last {pinned[0]}.{pinned[1] - 1} release"


def test_mlflow_s_database_was_backed_up_then_migrated(upgraded: dict[str, Any]) -> None:
    lines = upgraded["up"].stderr.splitlines()
    backup = next(i for i, line in enumerate(lines) if "Run aie-backup backup" in line)
    migrate = next(i for i, line in enumerate(lines) if "Run aie.mlflow_db upgrade" in line)
    assert backup < migrate, "\n".join(lines)
    # That backup is tagged before-upgrade (retention keeps it): today's backup container, deployed
    # before MLflow, took it.
    listed = run(["docker", "exec", f"{PREFIX}-backup", "aie-backup", "snapshots"], timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    tags = [set(snapshot["tags"]) for snapshot in json.loads(listed.stdout.strip().splitlines()[-1])]
    assert {PREFIX, "before-upgrade"} in tags, tags
    check = mlflow_exec("python", "-m", "aie.mlflow_db", "check", "sqlite:////mlflow/mlflow.db",
                        "sqlite:////mlflow/basic_auth.db", env={}, user="10001:10001")
    assert check.returncode == 0, check.stderr[-2000:]
    found = json.loads(check.stdout.strip().splitlines()[-1])
    assert found["mlflow"] == PINNED_MLFLOW
    assert {store: state["state"] for store, state in found["stores"].items()} == {"tracking": "current",
                                                                                  "auth": "current"}


def test_an_older_mlflow_than_the_one_running_is_refused_before_anything_changes(upgraded: dict[str, Any]) -> None:
    before = run(["docker", "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", f"{PREFIX}-mlflow"]).stdout
    settings = json.loads(upgraded["vars"].read_text())
    extra = write_vars(upgraded["vars"].with_name("downgrade.json"),
                       {**settings, "aie_mlflow_version": PREVIOUS_MLFLOW})
    down = aie("up", "-i", str(upgraded["inventory"]), "-e", extra, timeout=600)
    assert down.returncode != 0
    assert (f"aie_mlflow_version={PREVIOUS_MLFLOW}: older than MLflow {PINNED_MLFLOW}, which runs in "
            f"{PREFIX}-mlflow") in down.stdout + down.stderr, down.stdout[-3000:]
    assert "  changed " not in down.stderr, down.stderr[-3000:]
    assert run(["docker", "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", f"{PREFIX}-mlflow"]).stdout == before


# Last: the upgraded deployment, with its runs, model, accounts and artifacts, moves to PostgreSQL.
@pytest.fixture(scope="module")
def moved(upgraded: dict[str, Any]) -> dict[str, Any]:
    before = _tracked(upgraded["keys"])
    started = time.monotonic()
    done = aie("move-to-postgresql", "-i", str(upgraded["inventory"]), "-e", upgraded["extra"])
    print(f"move to PostgreSQL: aie move-to-postgresql {time.monotonic() - started:.0f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"done": done, "before": before}


def _tracked(keys: Path) -> dict[str, int]:
    """The runs and metric values that MLflow's server holds (the earlier tests' among them),
    counted through its API as the admin."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in mlflow_admin(keys).items():
            patch.setenv(name, value)
        client = MlflowClient(tracking_uri=MLFLOW_URL)
        ids = [experiment.experiment_id for experiment in client.search_experiments(view_type=ViewType.ALL)]
        runs = client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1000)
        metrics = sum(len(client.get_metric_history(found.info.run_id, key))
                      for found in runs for key in found.data.metrics)
    return {"runs": len(runs), "metrics": metrics}


def test_the_move_to_postgresql_backs_up_and_reports_what_it_moved(moved: dict[str, Any]) -> None:
    done = moved["done"]
    assert done.stderr.index("Run aie-backup backup") < done.stderr.index("Run aie.mlflow_db move")
    tracking = next(line for line in done.stdout.splitlines() if "moved the tracking database:" in line)
    counts = dict(item.rsplit(" ", 1) for item in tracking.split(": ", 2)[2].split(", "))
    assert int(counts["runs"]) == moved["before"]["runs"] >= 2, (tracking, moved["before"])
    assert int(counts["metrics"]) == moved["before"]["metrics"] >= 10, (tracking, moved["before"])
    assert int(counts["model_versions"]) == 1 and int(counts["registered_model_aliases"]) == 1, tracking
    assert "moved the auth database:" in done.stdout
    args = run(["docker", "inspect", "-f", "{{json .Args}}", f"{PREFIX}-mlflow"], timeout=60).stdout
    assert f"--backend-store-uri=postgresql+psycopg://mlflow@{PREFIX}-database:5432/mlflow" in args


def test_runs_models_accounts_and_artifacts_read_back_after_the_move(moved: dict[str, Any], upgraded: dict[str, Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    test_runs_metrics_and_models_survive_the_upgrade(upgraded, monkeypatch)
    test_artifacts_read_back_byte_for_byte_with_accounts_and_https(upgraded)
    # MLflow's own client account (the notebooks') signs in on PostgreSQL's account store.
    password = (upgraded["keys"] / "secrets" / "mlflow_jupyterlab_password").read_text().split()[0]
    search = MLFLOW_URL + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(search, account=("jupyterlab", password), cafile=tls_ca(upgraded["keys"])) == 200


def test_after_the_move_mlflow_on_sqlite_is_refused(moved: dict[str, Any], upgraded: dict[str, Any]) -> None:
    refused = aie("up", "-i", str(upgraded["inventory"]), "-e", upgraded["extra"], timeout=600)
    assert refused.returncode != 0
    assert (f"MLflow's runs are in PostgreSQL (the container {PREFIX}-mlflow runs on it), not in SQLite"
            in refused.stderr.strip().splitlines()[-1])
