"""The local stack with aie_mlflow_backend: postgresql (prefix aiepg, its own ports).

MLflow's tracking and account stores are PostgreSQL databases reached over TLS with passwords
from a password file; the server refuses plain connections, wrong passwords and a role in the
other store's database; 64 clients log metrics with no error; a backup is a pg_dump that
`aie restore` loads into a new cluster; MLflow's Prometheus metrics answer signed-in accounts.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import aie, bounded_load, containers, http_status, mlflow_admin, run, tls_ca, write_vars

PREFIX = "aiepg"
PORTS = {"aie_mlflow_port": 35500, "aie_sftp_port": 32222, "aie_s3_port": 39000,
         "aie_jupyterlab_port": 38888, "aie_serving_port": 35001, "aie_database_port": 35432}
URL = f"https://127.0.0.1:{PORTS['aie_mlflow_port']}"
DATABASE = f"{PREFIX}-database"


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("pg")
    keys = work / "keys"
    settings = {"aie_name_prefix": PREFIX, "aie_keys_dir": str(keys), "minio_engine": "rgw",
                "minio_rgw_capacity_gib": 4, "aie_backup_local_path": str(work / "backups"),
                "aie_mlflow_backend": "postgresql", **PORTS}
    extra = write_vars(work / "vars.json", settings)
    leftovers = aie("down", "--purge", "--yes", "-e", extra, timeout=600)
    assert leftovers.returncode == 0, leftovers.stdout[-2000:] + leftovers.stderr[-2000:]
    up = aie("up", "-e", extra)
    saved = {name: os.environ.get(name) for name in mlflow_admin(keys)}
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        os.environ.update(mlflow_admin(keys))
        yield {"extra": extra, "keys": keys}
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


def test_a_second_up_changes_nothing(pg_stack: dict[str, Any]) -> None:
    again = aie("up", "-e", pg_stack["extra"], timeout=1800)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "changed=0" in again.stdout, again.stdout[-3000:]
