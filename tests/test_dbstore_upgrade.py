"""Upgrade from a release whose rgw engine kept the objects in RADOS Gateway's dbstore backend.

Release DBSTORE_RELEASE of this project (taken from its git history) is deployed with
`minio_engine: rgw` as its users ran it: S3 on dbstore, MLflow over plain HTTP with one S3
account. Only the plays that make S3 and MLflow run (that release also required a JupyterLab
host, which plays no part here). A notebook's two runs log a 1 MiB and a 12 MiB artifact to
notebooks-s3; the 12 MiB one goes up in two parts, and dbstore reads such an object back wrong.
Today's `aie up` then moves the store into the one-node Ceph cluster, and `aie s3-check` must
still name the run of the corrupt artifact, exit 1, and find the other one whole: the copy gave
the corrupt bytes a fresh, matching ETag, so only the ETag dbstore gave the upload can tell.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import BIN, aie, building, containers, earlier_release, run, write_local_inventory, write_vars

# The last release whose rgw engine ran on dbstore (the next ones run a Ceph cluster).
DBSTORE_RELEASE = "079f58f"
PREFIX = "aiedbs"
PORTS = {"aie_mlflow_port": 24500, "aie_sftp_port": 24222, "aie_s3_port": 24000, "aie_jupyterlab_port": 24888}
# The plays of that release that make S3 and MLflow, after its checks, keys and Docker hosts.
PLAYS = ("validate", "keys", "prerequisites", "minio", "mlflow")

# Run inside the MLflow container: one run per artifact size, each run's id and size printed.
LOG_RUNS = r"""
import json, os, tempfile
import mlflow
mlflow.set_experiment("notebooks-s3")
out = {}
for size in (1 << 20, 12 << 20):
    with mlflow.start_run() as run:
        path = os.path.join(tempfile.mkdtemp(), "weights.bin")
        with open(path, "wb") as handle:
            handle.write(os.urandom(size))
        mlflow.log_artifact(path, artifact_path="model")
        out[size] = run.info.run_id
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("dbstore-upgrade")
    settings = {"aie_name_prefix": PREFIX, "aie_keys_dir": str(work / "keys"), "minio_engine": "rgw",
                "minio_rgw_capacity_gib": 4, "aie_backup_local_path": str(work / "backups"),
                "aie_mlflow_backend": "sqlite", **PORTS}
    extra = write_vars(work / "vars.json", settings)
    inventory = write_local_inventory(work / "inventory.yml", ("mlflow", "sftp", "minio"))
    everything = ["-i", str(inventory), "-e", extra]
    leftovers = aie("down", "--purge", "--yes", *everything, timeout=600)
    assert leftovers.returncode == 0, leftovers.stdout[-2000:] + leftovers.stderr[-2000:]

    release = work / "release"
    old_settings = {**settings, **earlier_release(DBSTORE_RELEASE, release)}
    old_inventory = write_local_inventory(work / "release-inventory.yml", ("mlflow", "sftp", "minio", "jupyterlab"))
    with building(tmp_path_factory):
        old_up = run([str(BIN / "ansible-playbook"), "-i", str(old_inventory),
                      *(f"playbooks/{play}.yml" for play in PLAYS),
                      "-e", write_vars(work / "release-vars.json", old_settings)],
                     timeout=3600, cwd=release, extra_env={"ANSIBLE_CONFIG": str(release / "ansible.cfg")})
    try:
        assert old_up.returncode == 0, old_up.stdout[-3000:] + old_up.stderr[-3000:]
        logged = run(["docker", "exec", "-e", "MLFLOW_TRACKING_URI=http://localhost:5000", f"{PREFIX}-mlflow",
                      "python", "-c", LOG_RUNS], timeout=600)
        assert logged.returncode == 0, logged.stderr[-3000:]
        runs = {int(size): name for size, name in json.loads(logged.stdout.strip().splitlines()[-1]).items()}
        with building(tmp_path_factory):
            up = aie("up", *everything)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield {"runs": runs, "everything": everything}
    finally:
        down = aie("down", "--purge", "--yes", *everything, timeout=600)
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
        assert containers(PREFIX) == []


def _engine_log() -> list[str]:
    # The release's container (<prefix>-minio) gave way to today's, on the same volume.
    assert f"{PREFIX}-minio" not in containers(PREFIX)
    logs = run(["docker", "logs", f"{PREFIX}-s3"], timeout=60)
    return [line for line in (logs.stdout + logs.stderr).splitlines() if line.startswith("aie-rgw:")]


def test_aie_up_moves_the_dbstore_objects_into_the_cluster(upgraded: dict[str, Any]) -> None:
    log = _engine_log()
    assert "aie-rgw: copied 2 objects" in log, log
    # The move checks each copy against the ETag dbstore gave the upload, and names the mismatch.
    differ = [line for line in log if "differs from what it was given" in line]
    assert len(differ) == 1 and f"/{upgraded['runs'][12 << 20]}/artifacts/model/weights.bin" in differ[0], log


def test_s3_check_names_the_run_of_the_artifact_dbstore_corrupted(upgraded: dict[str, Any]) -> None:
    checked: subprocess.CompletedProcess[str] = aie("s3-check", *upgraded["everything"], timeout=600)
    assert checked.returncode == 1, checked.stdout[-3000:] + checked.stderr[-3000:]
    lines = checked.stdout.splitlines()
    assert "localhost: 2 objects (13.0 MiB) read back, 1 corrupt" in lines, checked.stdout
    # A run is named by its folder in the bucket: <experiment folder>/<run id>.
    named = [line for line in lines if line.startswith("  run with corrupt artifacts: ")]
    assert len(named) == 1 and named[0].endswith(f"/{upgraded['runs'][12 << 20]}"), checked.stdout
    assert not [line for line in lines if upgraded["runs"][1 << 20] in line], checked.stdout
