"""The local stack with aie_mlflow_backend: postgresql (prefix aiepg, its own ports).

MLflow's tracking and account stores are PostgreSQL databases reached over TLS with passwords
from a password file; the server refuses plain connections, wrong passwords and a role in the
other store's database; 64 clients log metrics with no error; a backup is a pg_dump that
`aie restore` loads into a new cluster; MLflow's Prometheus metrics answer signed-in accounts.

The stack is first deployed with the previous minor release of MLflow (PREVIOUS_MLFLOW: its Python
and MLflow images under names of their own), without JupyterLab and serving (optional groups whose
TensorFlow images would only be rebuilt at the old release); a run with metric steps and a
registered model with an alias are logged, and `aie up` with the pinned release and the whole
local inventory upgrades it: backup, migrations, new server. Last, the same MLflow is pointed at
this PostgreSQL server as an `external` one (as a managed service would be given: its address, its
CA, accounts from an Ansible Vault file).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import (
    BIN,
    ENGINE_SETTINGS,
    PINNED_MLFLOW,
    PREVIOUS_MLFLOW,
    aie,
    bounded_load,
    building,
    containers,
    http_status,
    mlflow_admin,
    run,
    s3_client,
    tls_ca,
    write_local_inventory,
    write_vars,
)

PREFIX = "aiepg"
PORTS = {"aie_mlflow_port": 26500, "aie_sftp_port": 26222, "aie_s3_port": 26000,
         "aie_jupyterlab_port": 26888, "aie_serving_port": 26001, "aie_database_port": 26432}
URL = f"https://127.0.0.1:{PORTS['aie_mlflow_port']}"
# This deployment's S3 region: not the default one, which every other deployment of the tests has.
REGION = "eu-central-1"
DATABASE = f"{PREFIX}-database"
# The previous deployment: MLflow's images at the previous release, and no JupyterLab or serving; the
# setting mlflow_image, read for one more release beside aie_service_overrides, names its image.
PREVIOUS_IMAGES = {"aie_python_image": "aie-prev/python:latest", "mlflow_image": "aie-prev/mlflow:latest"}
PREVIOUS_GROUPS = ("mlflow", "sftp", "s3", "database")


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("pg")
    keys = work / "keys"
    settings = {"aie_name_prefix": PREFIX, "aie_keys_dir": str(keys), **ENGINE_SETTINGS,
                "s3_rgw_capacity_gib": 4, "aie_backup_local_path": str(work / "backups"),
                "aie_mlflow_backend": "postgresql", "aie_s3_region": REGION, **PORTS}
    extra = write_vars(work / "vars.json", settings)
    leftovers = aie("down", "--purge", "--yes", "-e", extra, timeout=600)
    assert leftovers.returncode == 0, leftovers.stdout[-2000:] + leftovers.stderr[-2000:]
    inventory = write_local_inventory(work / "previous.yml", PREVIOUS_GROUPS)
    with building(tmp_path_factory):
        previous = aie("up", "-i", str(inventory), "-e", write_vars(work / "previous.json", {
            **settings, **PREVIOUS_IMAGES, "aie_mlflow_version": PREVIOUS_MLFLOW}))
    saved = {name: os.environ.get(name) for name in mlflow_admin(keys)}
    try:
        assert previous.returncode == 0, previous.stdout[-3000:] + previous.stderr[-3000:]
        assert f"{PREFIX}-jupyterlab" not in containers(PREFIX)
        os.environ.update(mlflow_admin(keys))
        logged = log_run("before-the-upgrade", 20)
        mlflow = client()
        mlflow.create_registered_model("upgrade-drill")
        version = mlflow.create_model_version("upgrade-drill", f"{mlflow.get_run(logged).info.artifact_uri}/model",
                                              run_id=logged)
        mlflow.set_registered_model_alias("upgrade-drill", "champion", version.version)
        started = time.perf_counter()
        with building(tmp_path_factory):
            up = aie("up", "-e", extra)
        print(f"upgrade from MLflow {PREVIOUS_MLFLOW} to {PINNED_MLFLOW} on PostgreSQL: "
              f"aie up {time.perf_counter() - started:.0f} s")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield {"extra": extra, "keys": keys, "work": work, "logged": logged, "up": up}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        down = aie("down", "--purge", "--yes", "-e", extra, timeout=600)
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
        assert containers(PREFIX) == []


def client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=URL)


def psql(sql: str, database: str = "mlflow") -> str:
    """SQL as PostgreSQL's superuser, through the container's socket (no network, no password)."""
    command = ["docker", "exec", "-u", "postgres", DATABASE, "psql", "-X", "-At", "-d", database, "-c", sql]
    done = run(command, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def connect_from_outside(keys: Path, conninfo: str, password: str) -> subprocess.CompletedProcess[str]:
    """psql from another container on the deployment's network, with the deployment's CA."""
    return run(["docker", "run", "--rm", "--network", PREFIX, "-e", f"PGPASSWORD={password}",
                "-v", f"{tls_ca(keys)}:/ca.pem:ro", "--entrypoint", "psql", "aie/database:latest",
                f"host={DATABASE} sslrootcert=/ca.pem {conninfo}", "-X", "-At", "-c", "SELECT 1"], timeout=120)


def secret(keys: Path, name: str) -> str:
    return (keys / "secrets" / name).read_text().split()[0]


def log_run(name: str, steps: int) -> str:
    mlflow = client()
    experiment = mlflow.get_experiment_by_name("notebooks-s3")
    run_id = str(mlflow.create_run(experiment.experiment_id, run_name=name).info.run_id)
    mlflow.log_param(run_id, "backend", "postgresql")
    for step in range(steps):
        mlflow.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
    mlflow.set_terminated(run_id)
    return run_id


def test_mlflow_keeps_runs_and_accounts_in_postgresql_over_tls(pg_stack: dict[str, Any]) -> None:
    inspect = run(["docker", "inspect", "-f", "{{json .Args}}", f"{PREFIX}-mlflow"], timeout=60)
    args = json.loads(inspect.stdout)
    store = next(a for a in args if a.startswith("--backend-store-uri="))
    assert store == (f"--backend-store-uri=postgresql+psycopg://mlflow@{DATABASE}:5432/mlflow"
                     "?sslmode=verify-full&sslrootcert=/etc/aie/tls/ca.pem")
    # No password on the command line, in the environment or the auth config: only in the pgpass file.
    password = secret(pg_stack["keys"], "database_mlflow_password")
    env = run(["docker", "inspect", "-f", "{{json .Config.Env}}", f"{PREFIX}-mlflow"], timeout=60).stdout
    assert password not in inspect.stdout and password not in env
    run_id = log_run("on-postgresql", 5)
    assert psql(f"SELECT count(*) FROM metrics WHERE run_uuid = '{run_id}'") == "5"
    assert psql("SELECT count(*) FROM users WHERE username = 'jupyterlab'", "mlflow_auth") == "1"
    # Every connection of MLflow's two stores is encrypted.
    sessions = psql("SELECT usename, ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)"
                    " WHERE usename IN ('mlflow', 'mlflow_auth')").splitlines()
    assert {line.split("|")[0] for line in sessions} == {"mlflow", "mlflow_auth"}, sessions
    assert {line.split("|")[1] for line in sessions} == {"t"}, sessions
    assert psql("SHOW password_encryption") == "scram-sha-256"


def test_the_upgrade_backed_up_migrated_and_kept_every_run_and_model(pg_stack: dict[str, Any]) -> None:
    lines = pg_stack["up"].stderr.splitlines()
    backup = next(i for i, line in enumerate(lines) if "Run aie-backup backup" in line)
    migrate = next(i for i, line in enumerate(lines) if "Run aie.mlflow_db upgrade" in line)
    assert backup < migrate, "\n".join(lines)
    # That backup (the backup container is today's) is tagged before-upgrade: retention keeps it.
    listed = run(["docker", "exec", f"{PREFIX}-backup", "aie-backup", "snapshots"], timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    tags = [set(snapshot["tags"]) for snapshot in json.loads(listed.stdout.strip().splitlines()[-1])]
    assert {PREFIX, "before-upgrade"} in tags, tags
    head = run(["docker", "exec", f"{PREFIX}-mlflow", "python", "-c",
                "from mlflow.store.db.utils import _get_latest_schema_revision as h; print(h())"], timeout=120)
    assert head.returncode == 0, head.stderr[-2000:]
    assert psql("SELECT version_num FROM alembic_version") == head.stdout.strip()
    label = run(["docker", "inspect", "-f", '{{index .Config.Labels "org.aie.mlflow-version"}}',
                 f"{PREFIX}-mlflow"], timeout=60)
    assert label.stdout.strip() == PINNED_MLFLOW
    mlflow = client()
    history = mlflow.get_metric_history(pg_stack["logged"], "loss")
    assert sorted((m.step, m.value) for m in history) == [(step, 1.0 / (step + 1)) for step in range(20)]
    assert mlflow.get_run(pg_stack["logged"]).data.params == {"backend": "postgresql"}
    assert mlflow.get_model_version_by_alias("upgrade-drill", "champion").run_id == pg_stack["logged"]
    # The whole inventory is deployed now: JupyterLab joined with the upgrade.
    assert f"{PREFIX}-jupyterlab" in containers(PREFIX)


def test_the_bucket_is_in_the_region_the_settings_name(pg_stack: dict[str, Any]) -> None:
    # The S3 server's region is aie_s3_region: the bucket is made there, and the artifact clients,
    # who sign their requests for it, write and read there.
    server = s3_client(pg_stack["keys"], "s3", port=PORTS["aie_s3_port"], region=REGION)
    assert server.get_bucket_location(Bucket="ai-models")["LocationConstraint"] == REGION
    artifacts = s3_client(pg_stack["keys"], port=PORTS["aie_s3_port"], region=REGION)
    artifacts.put_object(Bucket="ai-models", Key="region-probe", Body=b"eu")
    try:
        assert artifacts.get_object(Bucket="ai-models", Key="region-probe")["Body"].read() == b"eu"
    finally:
        artifacts.delete_object(Bucket="ai-models", Key="region-probe")


def test_postgresql_refuses_plain_connections_wrong_passwords_and_other_databases(pg_stack: dict[str, Any]) -> None:
    keys = pg_stack["keys"]
    password = secret(keys, "database_mlflow_password")
    good = connect_from_outside(keys, "dbname=mlflow user=mlflow sslmode=verify-full", password)
    assert good.returncode == 0 and good.stdout.strip() == "1", good.stderr
    plain = connect_from_outside(keys, "dbname=mlflow user=mlflow sslmode=disable", password)
    assert plain.returncode != 0 and "no pg_hba.conf entry" in plain.stderr, plain.stderr
    wrong = connect_from_outside(keys, "dbname=mlflow user=mlflow sslmode=verify-full", password[::-1])
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong.stderr
    other = connect_from_outside(keys, "dbname=mlflow_auth user=mlflow sslmode=verify-full", password)
    assert other.returncode != 0 and "no pg_hba.conf entry" in other.stderr, other.stderr
    superuser = connect_from_outside(keys, "dbname=postgres user=postgres sslmode=verify-full", password)
    assert superuser.returncode != 0 and "no pg_hba.conf entry" in superuser.stderr, superuser.stderr
    # Only MLflow's host signs in: on one engine, from the services' network (no 0.0.0.0/0).
    network = json.loads(run(["docker", "network", "inspect", PREFIX], timeout=60).stdout)[0]
    hba = run(["docker", "exec", "-u", "postgres", DATABASE, "cat", "/etc/aie/database/pg_hba.conf"], timeout=60)
    assert hba.returncode == 0, hba.stderr
    admitted = {line.split()[3] for line in hba.stdout.splitlines() if line.startswith("hostssl")}
    assert admitted == {config["Subnet"] for config in network["IPAM"]["Config"]}, hba.stdout
    # The server runs as postgres, not root.
    users = run(["docker", "exec", DATABASE, "ps", "-o", "user=", "-C", "postgres"], timeout=60).stdout.split()
    assert users and set(users) == {"postgres"}, users


def test_64_clients_log_metrics_with_no_error(pg_stack: dict[str, Any]) -> None:
    bounded_load("postgresql", URL, pg_stack["keys"])


def test_prometheus_metrics_for_signed_in_accounts(pg_stack: dict[str, Any]) -> None:
    ca = tls_ca(pg_stack["keys"])
    assert http_status(f"{URL}/metrics", None, cafile=ca) == 401
    admin = ("admin", secret(pg_stack["keys"], "mlflow_admin_password"))
    assert http_status(f"{URL}/metrics", admin, cafile=ca) == 200
    status = aie("status", "-e", pg_stack["extra"], timeout=300)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"metrics: https://localhost:{PORTS['aie_mlflow_port']}/metrics" in status.stdout
    assert f"database      healthy  postgresql://localhost:{PORTS['aie_database_port']}" in status.stdout


def test_a_restore_loads_the_dump_into_a_new_cluster(pg_stack: dict[str, Any]) -> None:
    kept = log_run("before-the-backup", 7)
    backup = aie("backup", "-e", pg_stack["extra"], timeout=900)
    assert backup.returncode == 0, backup.stdout[-3000:] + backup.stderr[-3000:]
    lost = log_run("after-the-backup", 3)
    started = time.perf_counter()
    restored = aie("restore", "--force", "-e", pg_stack["extra"], timeout=1800)
    print(f"restore: {time.perf_counter() - started:.0f} s")
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    logs = run(["docker", "logs", DATABASE], timeout=60).stderr
    assert "aie-database: loading the dump of mlflow" in logs and "restored mlflow:" in logs, logs[-2000:]
    mlflow = client()
    history = mlflow.get_metric_history(kept, "loss")
    assert sorted(m.step for m in history) == list(range(7))
    assert mlflow.get_run(kept).data.params == {"backend": "postgresql"}
    with pytest.raises(Exception, match="RESOURCE_DOES_NOT_EXIST|not found"):
        mlflow.get_run(lost)
    # The accounts came back too: the client account still signs in.
    jupyterlab = ("jupyterlab", secret(pg_stack["keys"], "mlflow_jupyterlab_password"))
    assert http_status(f"{URL}/api/2.0/mlflow/experiments/search?max_results=1", jupyterlab,
                       cafile=tls_ca(pg_stack["keys"])) == 200


def database_logs(since: float) -> str:
    return run(["docker", "logs", "--since", f"{since:.3f}", DATABASE], timeout=60).stderr


def until(condition: Any, what: str, since: float, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {seconds:.0f} s\n{database_logs(since)[-2000:]}"
        time.sleep(1)


def test_a_load_that_did_not_finish_is_done_again_and_the_dumps_are_kept(pg_stack: dict[str, Any]) -> None:
    # The volume as a restore leaves it (dumps, no cluster), with the tracking store's dump cut
    # short: its load fails, and leaves it unfinished as a load killed midway does. Docker starts
    # the server again: it must neither serve the empty database nor let a dump replace the good one.
    runs = psql("SELECT count(*) FROM runs")
    assert int(runs) > 0
    volume = f"{PREFIX}-database-data"
    on_volume = ["docker", "run", "--rm", "-v", f"{volume}:/var/lib/postgresql", "aie/database:latest"]
    assert run(["docker", "stop", f"{PREFIX}-mlflow", DATABASE], timeout=120).returncode == 0
    cut = run([*on_volume, "sh", "-c", "cd /var/lib/postgresql && mv dumps/mlflow.dump mlflow.dump.good && "
               "head -c 4000 mlflow.dump.good > dumps/mlflow.dump && rm -rf data"], timeout=120)
    assert cut.returncode == 0, cut.stderr
    since = time.time()
    assert run(["docker", "start", DATABASE], timeout=120).returncode == 0
    until(lambda: database_logs(since).count("loading the dump of mlflow") >= 2, "a second try at the load", since)
    assert "the load of mlflow did not finish: loading it again" in database_logs(since)
    # The backup agent's dump (aie-database dump) leaves the good dumps alone meanwhile.
    dump = run([*on_volume, "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                "aie-database", "dump"], timeout=120)
    assert dump.returncode != 0, dump.stdout + dump.stderr
    assert "not dumping: the dumps of a restore are not all loaded yet (mlflow" in dump.stderr, dump.stderr
    # The good dump back: the next try loads it, and the server serves every run.
    back = run([*on_volume, "sh", "-c", "cd /var/lib/postgresql && cat mlflow.dump.good > dumps/mlflow.dump "
                "&& rm mlflow.dump.good"], timeout=120)
    assert back.returncode == 0, back.stderr
    until(lambda: "restored mlflow:" in database_logs(since), "the load", since)
    until(lambda: run([*on_volume, "test", "!", "-e", "/var/lib/postgresql/load-pending"], timeout=60).returncode == 0
          and run(["docker", "exec", "-u", "postgres", DATABASE, "pg_isready", "-q"], timeout=60).returncode == 0,
          "the server", since)
    assert psql("SELECT count(*) FROM runs") == runs
    assert run(["docker", "start", f"{PREFIX}-mlflow"], timeout=120).returncode == 0
    until(lambda: http_status(f"{URL}/health", cafile=tls_ca(pg_stack["keys"])) == 200, "MLflow", since)


def test_status_reports_a_stopped_database_down(pg_stack: dict[str, Any]) -> None:
    # PostgreSQL speaks no HTTP and sends no banner: its probe is an open port, which a stopped
    # server does not have.
    since = time.time()
    assert run(["docker", "stop", f"{PREFIX}-mlflow", DATABASE], timeout=120).returncode == 0
    try:
        down = aie("status", "-e", pg_stack["extra"], timeout=300)
    finally:
        assert run(["docker", "start", DATABASE], timeout=120).returncode == 0
        ready = ["docker", "exec", "-u", "postgres", DATABASE, "pg_isready", "-q"]
        until(lambda: run(ready, timeout=60).returncode == 0, "the server", since)
        assert run(["docker", "start", f"{PREFIX}-mlflow"], timeout=120).returncode == 0
        until(lambda: http_status(f"{URL}/health", cafile=tls_ca(pg_stack["keys"])) == 200, "MLflow", since)
    assert down.returncode == 1, down.stdout + down.stderr
    database = rf"^database\s+DOWN\s+postgresql://\S+:{PORTS['aie_database_port']}"
    assert re.search(database, down.stdout, re.M), down.stdout
    assert re.search(r"^sftp\s+healthy\s", down.stdout, re.M), down.stdout
    again = aie("status", "-e", pg_stack["extra"], timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"^database\s+healthy\s+postgresql://", again.stdout, re.M), again.stdout


def test_a_second_up_changes_nothing(pg_stack: dict[str, Any]) -> None:
    again = aie("up", "-e", pg_stack["extra"], timeout=1800)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "changed=0" in again.stdout, again.stdout[-3000:]


def test_mlflow_runs_on_an_external_postgresql_given_by_address_ca_and_vault(pg_stack: dict[str, Any]) -> None:
    """The stack's PostgreSQL as if it were a managed service: MLflow is given its name, port and
    CA, and the accounts from a Vault-encrypted vars file; no database is deployed for it."""
    keys, work = pg_stack["keys"], pg_stack["work"]
    # The accounts the stack made (group_vars/all/database.yml), given as an owner would give them.
    accounts = {
        "tracking": {"database": "mlflow", "user": "mlflow", "password": secret(keys, "database_mlflow_password")},
        "auth": {"database": "mlflow_auth", "user": "mlflow_auth", "password": secret(keys, "database_auth_password")},
    }
    external = work / "external.yml"
    external.write_text(yaml.safe_dump({
        "aie_mlflow_backend": "external",
        "aie_database_external": {"host": DATABASE, "port": 5432, "ca_bundle": str(tls_ca(keys))},
        "aie_database_accounts": accounts,
    }))
    vault_password = work / "vault-password"
    vault_password.write_text(os.urandom(16).hex())
    encrypted = run([str(BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(vault_password),
                     str(external)], timeout=120)
    assert encrypted.returncode == 0, encrypted.stderr
    assert accounts["tracking"]["password"] not in external.read_text()
    kept = log_run("before-going-external", 4)
    up = aie("up", "-e", pg_stack["extra"], "-e", f"@{external}",
             extra_env={"ANSIBLE_VAULT_PASSWORD_FILE": str(vault_password)})
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert accounts["tracking"]["password"] not in up.stdout + up.stderr
    args = json.loads(run(["docker", "inspect", "-f", "{{json .Args}}", f"{PREFIX}-mlflow"], timeout=60).stdout)
    store = next(a for a in args if a.startswith("--backend-store-uri="))
    # The given CA bundle, checked with the server's name.
    assert store == (f"--backend-store-uri=postgresql+psycopg://mlflow@{DATABASE}:5432/mlflow"
                     "?sslmode=verify-full&sslrootcert=/etc/aie/database/ca.pem"), store
    mlflow = client()
    assert sorted(m.step for m in mlflow.get_metric_history(kept, "loss")) == list(range(4))
    after = log_run("on-the-external-server", 3)
    assert psql(f"SELECT count(*) FROM metrics WHERE run_uuid = '{after}'") == "3"
    status = aie("status", "-e", pg_stack["extra"], "-e", f"@{external}",
                 extra_env={"ANSIBLE_VAULT_PASSWORD_FILE": str(vault_password)}, timeout=300)
    print(status.stdout)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "mlflow        healthy" in status.stdout, status.stdout
