"""Backups, restore drills and faults on the deployed single-host stack.

The drill logs runs with parameters, metrics and artifacts in both experiments (SFTP and
S3), backs up with `aie backup`, removes the data volumes, restores with `aie restore` and
checks, through MLflow, that every run, parameter, metric step and artifact byte is back;
files users put on a volume that look like databases, or whose names hold restic's patterns,
neither stop the backup nor leave anything out of it. The tests run in file order: each builds
on the state the one before left.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from conftest import PREFIX, PROJECT, aie, in_jupyterlab, jupyter_exec, mlflow_status, run, write_vars

# Every data volume of the stack: the services', and JupyterHub's with its people's (alice, bob).
VOLUMES = [f"{PREFIX}-{name}" for name in ("mlflow-data", "sftp-data", "minio-data", "jupyterhub-data",
                                           "jupyterhub-user-alice", "jupyterhub-user-bob")]

LOG_DRILL_RUNS = r"""
import json, os, sys, tempfile
import mlflow
runs_per_experiment = int(sys.argv[1])
ids = []
for name in ("notebooks-sftp", "notebooks-s3"):
    mlflow.set_experiment(name)
    for index in range(runs_per_experiment):
        with mlflow.start_run() as run:
            mlflow.log_params({"learning_rate": 0.01 * (index + 1), "batch_size": 32, "optimizer": "adam",
                               "index": index})
            for step in range(5):
                mlflow.log_metrics({"loss": 1.0 / (step + 1 + index), "accuracy": step / 5}, step=step)
            folder = tempfile.mkdtemp()
            # The first run's weights are above S3's multipart threshold (8 MiB with boto3).
            weights = (9 << 20 if index == 0 else 200_000) + index * 1000
            for file_name, size in (("weights.bin", weights), ("summary.txt", 1000)):
                with open(os.path.join(folder, file_name), "wb") as handle:
                    handle.write(os.urandom(size))
            mlflow.log_artifacts(folder, artifact_path="model")
            ids.append(run.info.run_id)
print(json.dumps(ids))
"""

# Everything MLflow serves about the given runs, artifacts as checksums of what it downloads.
DIGEST = r"""
import hashlib, json, os, sys, tempfile
import mlflow
from mlflow.tracking import MlflowClient
client = MlflowClient()
state = {}
for run_id in json.loads(sys.argv[1]):
    run = client.get_run(run_id)
    metrics = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
               for key in run.data.metrics}
    folder = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=tempfile.mkdtemp())
    artifacts = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                artifacts[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    state[run_id] = {"experiment": client.get_experiment(run.info.experiment_id).name,
                     "status": run.info.status, "params": run.data.params, "metrics": metrics,
                     "artifacts": artifacts, "bytes": sum(os.path.getsize(os.path.join(r, f))
                                                          for r, _, fs in os.walk(folder) for f in fs)}
print(json.dumps(state))
"""

# The status of each given run that the tracking server knows.
RUN_STATUSES = r"""
import json, sys
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
client = MlflowClient()
found = {}
for run_id in json.loads(sys.argv[1]):
    try:
        found[run_id] = client.get_run(run_id).info.status
    except MlflowException:
        pass
print(json.dumps(found))
"""

# Holds an SFTP artifact store open across a server restart (as a notebook kernel would).
OPEN_STORE = r"""
import os, sys, tempfile
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
repo = get_artifact_repository(sys.argv[1])
folder = tempfile.mkdtemp()
for name in ("before.bin", "after.bin"):
    with open(os.path.join(folder, name), "wb") as handle:
        handle.write(os.urandom(100_000))
repo.log_artifact(os.path.join(folder, "before.bin"))
print("uploaded before", flush=True)
sys.stdin.readline()
repo.log_artifact(os.path.join(folder, "after.bin"))
print(sorted(entry.path for entry in repo.list_artifacts()), flush=True)
"""


# Files anyone with the SFTP key can put on its volume (run in the backup container, which
# mounts it): one that begins with SQLite's header and is no database, a database whose name
# holds restic's exclude patterns `volumes` and `stage` (every volume and the database copies),
# and a canary; prints each file's checksum.
PLANT_USER_FILES = r"""
import os, sqlite3, sys
folder = sys.argv[1]
os.makedirs(folder)
with open(os.path.join(folder, "broken.db"), "wb") as handle:
    handle.write(b"SQLite format 3\x00" + os.urandom(4096))
db = sqlite3.connect(os.path.join(folder, "x\nvolumes\nstage"))
db.execute("CREATE TABLE t (x)")
db.execute("INSERT INTO t VALUES (1)")
db.commit()
db.close()
with open(os.path.join(folder, "canary.bin"), "wb") as handle:
    handle.write(os.urandom(100_000))
"""
USER_FILES_DIGEST = r"""
import hashlib, json, os, sys
folder = sys.argv[1]
names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
print(json.dumps({name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
                  for name in names}))
"""
USER_FILES = "/volumes/sftp-data/drill-user-files"


def in_backup_container(script: str, *args: str) -> str:
    done = run(["docker", "exec", f"{PREFIX}-backup", "python3", "-c", script, *args], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def log_runs(count: int) -> list[str]:
    result = jupyter_exec("python", "-c", LOG_DRILL_RUNS, str(count), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    ids: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return ids


def digest(run_ids: list[str]) -> dict[str, Any]:
    result = jupyter_exec("python", "-c", DIGEST, json.dumps(run_ids), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    state: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return state


def backup(stack: dict[str, Any]) -> tuple[str, float]:
    started = time.perf_counter()
    done = aie("backup", "-e", stack["extra"], timeout=900)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    match = re.search(r"^localhost: snapshot ([0-9a-f]{8}), (\d+) files", done.stdout, re.M)
    assert match, done.stdout
    print(f"backup: {done.stdout.strip()} ({seconds:.0f} s with aie)")
    return match.group(1), seconds


def restore(stack: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return aie("restore", "-e", stack["extra"], *args, timeout=1800)


def mlflow_answers() -> bool:
    return mlflow_status("/health") == 200


@pytest.fixture(scope="module")
def drill(stack: dict[str, Any]) -> dict[str, Any]:
    run_ids = log_runs(3)
    before = digest(run_ids)
    in_backup_container(PLANT_USER_FILES, USER_FILES)
    user_files = json.loads(in_backup_container(USER_FILES_DIGEST, USER_FILES))
    assert len(user_files) == 3, user_files
    snapshot, seconds = backup(stack)
    return {"run_ids": run_ids, "before": before, "user_files": user_files, "snapshot": snapshot,
            "backup_seconds": seconds}


def test_backup_is_listed_and_kept_outside_the_volumes(stack: dict[str, Any], drill: dict[str, Any]) -> None:
    listed = aie("snapshots", "-e", stack["extra"], timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert re.search(rf"^{drill['snapshot']}\s+\S+ \S+\s+localhost\s", listed.stdout, re.M), listed.stdout
    # The repository is an encrypted restic repository in the folder the settings name.
    assert (stack["backups"] / "config").is_file() and (stack["backups"] / "snapshots").is_dir()
    assert b"notebooks-sftp" not in b"".join(p.read_bytes() for p in (stack["backups"] / "data").rglob("*")
                                             if p.is_file())


def test_restore_refuses_volumes_that_hold_data(stack: dict[str, Any], drill: dict[str, Any]) -> None:
    refused = restore(stack)
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert "hold data" in last and "--force" in last and "mlflow-data" in last, last
    # Nothing was stopped.
    assert mlflow_answers()


def test_an_unknown_snapshot_is_named(stack: dict[str, Any], drill: dict[str, Any]) -> None:
    refused = restore(stack, "--snapshot", "deadbeef", "--force")
    assert refused.returncode != 0
    assert "no snapshot deadbeef in the backup repository" in refused.stderr.strip().splitlines()[-1]
    assert mlflow_answers()


def backup_tool(tmp_path: Path, **settings: Any) -> tuple[list[str], str, Path]:
    """`docker run` of the stack's backup image with aie-backup's config, a volume `data` and a
    repository of its own, in folders of tmp_path; the image; the volume's folder."""
    setting = yaml.safe_load((PROJECT / "group_vars/all/backup.yml").read_text())["aie_backup_image"]
    image = jinja2.Template(setting).render()
    config, volume, repository = (tmp_path / name for name in ("config", "data", "repository"))
    for folder in (config, volume, repository):
        folder.mkdir()
    (config / "password").write_text(secrets.token_hex(16))
    (config / "backup.json").write_text(json.dumps({
        "host": "drill", "tag": "drill", "repository": "/repository", "options": [],
        "password_file": "/config/password", "volumes": ["data"], "quiesce": [], "dumps": [], "prune": False,
        "databases": [], "schedule": "17 3 * * *", **settings}))
    docker = ["docker", "run", "--rm", "-v", f"{config}:/config:ro", "-v", f"{volume}:/volumes/data",
              "-v", f"{repository}:/repository", "-e", "AIE_BACKUP_CONFIG=/config/backup.json",
              "-e", "RESTIC_REPOSITORY=/repository", "-e", "RESTIC_PASSWORD_FILE=/config/password"]
    return docker, image, volume


def test_a_database_that_cannot_be_copied_is_named_and_the_rest_is_backed_up(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    # aie-backup in the stack's backup image, on a folder of its own: the database the
    # deployment names is no database (SQLite's header, then other bytes).
    docker, image, volume = backup_tool(tmp_path, databases=[{"volume": "data", "path": "mlflow.db"}])
    (volume / "mlflow.db").write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    (volume / "canary.bin").write_bytes(os.urandom(50_000))
    done = run([*docker, "--entrypoint", "aie-backup", image, "backup"], timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "was taken without a consistent copy of /volumes/data/mlflow.db: " in last, last
    listed = run([*docker, "--entrypoint", "restic", image, "ls", "--json", "latest"], timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    paths = {entry.get("path") for entry in map(json.loads, listed.stdout.splitlines()) if entry.get("path")}
    # The rest is in the snapshot, the database as the file it is, and no half copy of it.
    assert {"/volumes/data/canary.bin", "/volumes/data/mlflow.db"} <= paths, paths
    assert "/stage/data/mlflow.db" not in paths


def test_retention_keeps_every_snapshot_taken_before_an_upgrade(stack: dict[str, Any], tmp_path: Path) -> None:
    # One daily snapshot kept: of two taken today, retention forgets the older, unless it was
    # taken before an upgrade (`backup --keep`, as the mlflow role does before a migration).
    docker, image, volume = backup_tool(tmp_path, prune=True, keep={"daily": 1, "weekly": 0, "monthly": 0})
    (volume / "canary.bin").write_bytes(os.urandom(1000))
    for command in (["backup", "--keep"], ["backup", "--keep"], ["backup"], ["backup"]):
        done = run([*docker, "--entrypoint", "aie-backup", image, *command], timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    listed = run([*docker, "--entrypoint", "restic", image, "snapshots", "--json"], timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    tags = sorted(tuple(snapshot["tags"]) for snapshot in json.loads(listed.stdout))
    assert tags == [("drill",), ("drill", "before-upgrade"), ("drill", "before-upgrade")], tags


def test_the_shared_repository_of_earlier_releases_is_split_into_one_per_host(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    # The backup host's repository as earlier releases kept it: every host's snapshots in one,
    # with one password. aie-backup split (run by the backup server at start) copies each host's
    # into a repository of its own, with that host's password, once.
    hosts = ("alpha", "beta")
    docker, image, volume = backup_tool(tmp_path, options=["--no-cache"], repositories={
        host: {"repository": f"/repository/{host}", "password_file": f"/config/{host}"} for host in hosts})
    for host in hosts:
        (tmp_path / "config" / host).write_text(secrets.token_hex(16))
    (volume / "canary.bin").write_bytes(os.urandom(1000))
    made = run([*docker, "--entrypoint", "sh", image, "-c", "restic init && restic backup --host alpha --tag drill "
                "/volumes/data && restic backup --host beta --tag drill /volumes/data && restic backup --host beta "
                "--tag drill /volumes/data"], timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    for attempt in range(2):
        split = run([*docker, "--entrypoint", "aie-backup", image, "split"], timeout=300)
        assert split.returncode == 0, split.stdout + split.stderr
        assert ("copying alpha's snapshots" in split.stderr) == (attempt == 0), split.stderr
    for host, count in (("alpha", 1), ("beta", 2)):
        listed = run([*docker, "-e", f"RESTIC_PASSWORD_FILE=/config/{host}", "--entrypoint", "restic", image,
                      "-r", f"/repository/{host}", "snapshots", "--json"], timeout=300)
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert [snapshot["hostname"] for snapshot in json.loads(listed.stdout)] == [host] * count
    assert (tmp_path / "repository" / "aie-split-into-host-repositories").is_file()


def test_restore_drill_brings_back_every_run_metric_and_artifact(
    stack: dict[str, Any], drill: dict[str, Any]
) -> None:
    down = aie("down", "-e", stack["extra"], timeout=600)
    assert down.returncode == 0, down.stderr[-2000:]
    removed = run(["docker", "volume", "rm", *VOLUMES], timeout=120)
    assert removed.returncode == 0, removed.stderr
    started = time.perf_counter()
    restored = restore(stack)
    seconds = time.perf_counter() - started
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    assert f"from snapshot {drill['snapshot']}" in restored.stdout, restored.stdout
    after = digest(drill["run_ids"])
    assert after == drill["before"]
    assert json.loads(in_backup_container(USER_FILES_DIGEST, USER_FILES)) == drill["user_files"]
    runs = len(after)
    metrics = sum(len(steps) for state in after.values() for steps in state["metrics"].values())
    params = sum(len(state["params"]) for state in after.values())
    files = sum(len(state["artifacts"]) for state in after.values())
    size = sum(state["bytes"] for state in after.values())
    volumes_seconds = re.findall(r"from snapshot \S+ in ([0-9.]+) s", restored.stdout)
    print(f"restore drill: {runs} runs, {params} params, {metrics} metric values, {files} artifacts, "
          f"{size} bytes restored; backup {drill['backup_seconds']:.0f} s, restore {seconds:.0f} s with aie "
          f"(the volumes themselves: {volumes_seconds} s)")
    assert runs == 6 and files == 12
    large = {state["experiment"] for state in after.values() if state["bytes"] > 9 << 20}
    assert large == {"notebooks-sftp", "notebooks-s3"}, "each experiment holds an artifact above 8 MiB"


def test_one_volume_is_restored_and_the_others_are_left_as_they_are(
    stack: dict[str, Any], drill: dict[str, Any]
) -> None:
    refused = restore(stack, "--volume", "nope-data")
    assert refused.returncode != 0
    assert "No volume nope-data in this deployment" in refused.stderr.strip().splitlines()[-1], refused.stderr[-2000:]
    # Since the drill's snapshot: the users' files are lost from SFTP's volume, and MLflow's
    # volume gained a file; MLflow runs on.
    in_backup_container("import shutil, sys; shutil.rmtree(sys.argv[1])", USER_FILES)
    in_backup_container("import sys; open(sys.argv[1], 'w').write('kept')", "/volumes/mlflow-data/since-the-drill")
    started = run(["docker", "inspect", "-f", "{{.State.StartedAt}}", f"{PREFIX}-mlflow"]).stdout
    restored = restore(stack, "--snapshot", drill["snapshot"], "--volume", "sftp-data", "--force")
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    assert f"localhost: restored sftp-data from snapshot {drill['snapshot']}" in restored.stdout, restored.stdout
    assert json.loads(in_backup_container(USER_FILES_DIGEST, USER_FILES)) == drill["user_files"]
    assert in_backup_container("import sys; print(open(sys.argv[1]).read())",
                               "/volumes/mlflow-data/since-the-drill").strip() == "kept"
    assert run(["docker", "inspect", "-f", "{{.State.StartedAt}}", f"{PREFIX}-mlflow"]).stdout == started
    in_backup_container("import os, sys; os.remove(sys.argv[1])", "/volumes/mlflow-data/since-the-drill")


def test_a_backup_taken_while_runs_are_logged_restores_cleanly(
    stack: dict[str, Any], drill: dict[str, Any]
) -> None:
    finished_before = log_runs(1)
    logging: dict[str, list[str]] = {}
    writer = threading.Thread(target=lambda: logging.update(ids=log_runs(8)))
    writer.start()
    time.sleep(5)
    snapshot, _ = backup(stack)
    writer.join()
    assert len(logging.get("ids", [])) == 16
    restored = restore(stack, "--snapshot", snapshot, "--force")
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    assert mlflow_answers()
    # What --force replaced was kept first, in a snapshot of its own that a plain restore leaves aside.
    kept = re.search(r"^localhost: what the volumes held is kept as snapshot ([0-9a-f]{8}) \(tag before-restore",
                     restored.stdout, re.M)
    assert kept, restored.stdout
    listed = aie("snapshots", "-e", stack["extra"], timeout=300)
    assert re.search(rf"^{kept.group(1)}\s", listed.stdout, re.M), listed.stdout
    # The runs finished before the backup started are whole; the database opens and lists every run.
    whole = digest(finished_before + drill["run_ids"])
    assert {i: whole[i] for i in drill["run_ids"]} == drill["before"]
    for run_id in finished_before:
        assert whole[run_id]["status"] == "FINISHED"
        assert [len(steps) for steps in whole[run_id]["metrics"].values()] == [5, 5]
        assert len(whole[run_id]["artifacts"]) == 2
    # The runs being logged during the backup are there or not, whole or marked RUNNING.
    statuses = jupyter_exec("python", "-c", RUN_STATUSES, json.dumps(logging["ids"]))
    assert statuses.returncode == 0, statuses.stderr[-2000:]
    found: dict[str, str] = json.loads(statuses.stdout.strip().splitlines()[-1])
    assert set(found.values()) <= {"FINISHED", "RUNNING"}, found
    print(f"backup during logging: {len(found)} of the {len(logging['ids'])} runs being logged are in the "
          f"snapshot, {list(found.values()).count('RUNNING')} of them marked RUNNING")


def test_an_open_sftp_store_survives_a_server_restart(stack: dict[str, Any]) -> None:
    uri = f"sftp://{PREFIX}-sftp/artifacts/fault-restart/{int(time.time())}"
    process = subprocess.Popen(
        in_jupyterlab("python", "-c", OPEN_STORE, uri),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    assert process.stdout.readline().strip() == "uploaded before"
    restarted = run(["docker", "restart", f"{PREFIX}-sftp"], timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    process.stdin.write("go\n")
    process.stdin.flush()
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == "['after.bin', 'before.bin']"


def test_a_killed_service_is_restarted_with_its_data(stack: dict[str, Any], drill: dict[str, Any]) -> None:
    name = f"{PREFIX}-mlflow"
    inspect = ["docker", "inspect", "-f", "{{.State.Pid}} {{.RestartCount}}", name]
    pid, restarts = run(inspect, timeout=60).stdout.split()
    # The main process dies as in a crash or an out-of-memory kill (not `docker stop`).
    killed = run(["kill", "-9", pid], timeout=30)
    assert killed.returncode == 0, killed.stderr
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        now = run(inspect, timeout=60).stdout.split()
        if len(now) == 2 and int(now[1]) > int(restarts) and now[0] != "0" and mlflow_answers():
            break
        time.sleep(2)
    else:
        pytest.fail(f"{name} did not come back after its process was killed")
    assert digest(drill["run_ids"][:2]) == {i: drill["before"][i] for i in drill["run_ids"][:2]}



def test_s3_left_paused_by_a_killed_backup_is_resumed_when_the_backup_container_starts(
    stack: dict[str, Any]
) -> None:
    s3, agent = f"{PREFIX}-s3", f"{PREFIX}-backup"
    paused = ["docker", "inspect", "-f", "{{.State.Paused}}", s3]
    # What a backup killed while restic read S3's volume leaves: S3 paused, then the backup
    # container starting again.
    assert run(["docker", "pause", s3], timeout=60).returncode == 0
    try:
        restarted = run(["docker", "restart", agent], timeout=120)
        assert restarted.returncode == 0, restarted.stderr
        deadline = time.monotonic() + 60
        while run(paused, timeout=60).stdout.strip() == "true" and time.monotonic() < deadline:
            time.sleep(1)
        assert run(paused, timeout=60).stdout.strip() == "false"
    finally:
        if run(paused, timeout=60).stdout.strip() == "true":
            run(["docker", "unpause", s3], timeout=60)
    logs = run(["docker", "logs", "--since", "5m", agent], timeout=60)
    assert f"aie-backup: resumed {s3}, paused by a backup that did not finish" in logs.stderr, logs.stderr[-2000:]


def test_the_schedule_runs_backups_and_a_missed_one_is_caught_up(stack: dict[str, Any]) -> None:
    # Every snapshot of this host is from before the minute the new schedule last fired: the
    # backup container, re-created with it, finds that backup missed (as after a night asleep)
    # and takes it at start; then cron's own runs follow.
    time.sleep(61 - datetime.datetime.now(datetime.timezone.utc).second)
    every_minute = write_vars(stack["backups"].parent / "every-minute.json", {"aie_backup_schedule": "* * * * *"})
    up = aie("up", "-e", stack["extra"], "-e", every_minute)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            logs = run(["docker", "logs", f"{PREFIX}-backup"], timeout=60)
            reports = [json.loads(line) for line in logs.stdout.splitlines() if line.startswith('{"snapshot"')]
            if len(reports) >= 2:
                break
            time.sleep(10)
        else:
            pytest.fail(f"not two backups within 4 minutes: {logs.stdout[-2000:]} {logs.stderr[-2000:]}")
        assert all(re.fullmatch(r"[0-9a-f]{64}", report["snapshot"]) for report in reports)
        caught_up = [line for line in logs.stderr.splitlines() if line.startswith("aie-backup: catch-up: ")]
        assert caught_up and "did not run (the latest snapshot is of " in caught_up[0], logs.stderr[-2000:]
        assert caught_up[0].endswith("backing up now"), caught_up
    finally:
        # A backup pauses the S3 server while restic reads its volume: stop the every-minute
        # schedule before deploying the normal one again.
        run(["docker", "stop", f"{PREFIX}-backup"], timeout=120)
        back = aie("up", "-e", stack["extra"])
        assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-3000:]
