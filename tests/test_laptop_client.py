"""A person's laptop, emulated on the controller: what `aie client-env` prints, an MLflow account,
and nothing else (no storage keys, no ssh config, an empty home). It logs large artifacts and a
model to the end-to-end stack's experiments, through MLflow, and reads them back; a person denied
an experiment is refused its runs and its artifacts."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import MLFLOW_URL, PREFIX, aie, http_status, run, s3_client, tls_ca

BIG = 100 * 1024 * 1024
MODEL = 12 * 1024 * 1024

LOG = r"""
import hashlib, json, os, sys, tempfile
import mlflow

BIG, MODEL = int(sys.argv[1]), int(sys.argv[2])


class Weights(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input


def random_file(path, size):
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for start in range(0, size, 1 << 20):
            chunk = os.urandom(min(1 << 20, size - start))
            digest.update(chunk)
            handle.write(chunk)
    return digest.hexdigest()


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


out = {}
for name in ("notebooks-sftp", "notebooks-s3"):
    mlflow.set_experiment(name)
    folder = tempfile.mkdtemp()
    with mlflow.start_run() as run:
        big = os.path.join(folder, "big.bin")
        weights = os.path.join(folder, "weights.bin")
        sums = {"big.bin": random_file(big, BIG), "weights.bin": random_file(weights, MODEL)}
        mlflow.log_artifact(big, artifact_path="data")
        info = mlflow.pyfunc.log_model(name="model", python_model=Weights(), artifacts={"weights": weights})
        back = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="data/big.bin")
        model = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri)
        read = {"big.bin": sha256(back),
                "weights.bin": sha256(os.path.join(model, "artifacts", "weights.bin"))}
        out[name] = {"run_id": run.info.run_id, "sums": sums, "read": read, "artifact_uri": mlflow.get_artifact_uri(),
                     "model_location": mlflow.get_logged_model(info.model_id).artifact_location}
print(json.dumps(out))
"""


def client_env(user: str, extra: str, home: Path) -> dict[str, str]:
    """The environment of a laptop with what `aie client-env` prints, and the person's password."""
    printed = aie("client-env", "--user", user, "-e", extra, timeout=120)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "PASSWORD=" not in printed.stdout
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    for line in printed.stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = shlex.split(value)[0]
    return env


@pytest.fixture(scope="module")
def laptop(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("laptop-home")
    env = client_env("carol", stack["extra"], home)
    env["MLFLOW_TRACKING_PASSWORD"] = (stack["keys"] / "secrets" / "mlflow_users" / "carol").read_text().split()[0]
    result = subprocess.run([sys.executable, "-c", LOG, str(BIG), str(MODEL)], env=env, cwd=home,
                            capture_output=True, text=True, timeout=1200, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    logged: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return {"env": env, "logged": logged, "home": home}


def test_client_env_names_the_deployments_mlflow_and_ca_and_no_secret(stack: dict[str, Any], laptop: dict[str, Any]
                                                                    ) -> None:
    env = laptop["env"]
    assert env["MLFLOW_TRACKING_URI"] == f"https://localhost:{MLFLOW_URL.rsplit(':', 1)[1]}"
    assert env["MLFLOW_TRACKING_USERNAME"] == "carol"
    assert Path(env["MLFLOW_TRACKING_SERVER_CERT_PATH"]) == tls_ca(stack["keys"])
    assert tls_ca(stack["keys"]).read_text() in Path(env["REQUESTS_CA_BUNDLE"]).read_text()
    # Nothing of the stores: the laptop's home stayed empty of keys.
    assert not any(name.startswith(("AWS_", "AIE_")) for name in env)
    assert sorted(path.name for path in laptop["home"].rglob("*") if path.is_file() and
                  ("ssh" in path.parts or ".aws" in path.parts)) == []
    unknown = aie("client-env", "--user", "mallory", "-e", stack["extra"], timeout=120)
    assert unknown.returncode == 1 and "mallory has no MLflow account here" in unknown.stderr


def test_a_laptop_logs_large_artifacts_and_a_model_and_reads_them_back(laptop: dict[str, Any]) -> None:
    for name, entry in laptop["logged"].items():
        assert entry["read"] == entry["sums"], name
        assert entry["artifact_uri"].startswith("mlflow-artifacts:/"), entry
        assert entry["model_location"].startswith("mlflow-artifacts:/"), entry


def test_the_artifacts_land_in_each_experiments_store(stack: dict[str, Any], laptop: dict[str, Any]) -> None:
    sftp = laptop["logged"]["notebooks-sftp"]
    stored = "by-experiment-id/" + sftp["artifact_uri"].split(":", 1)[1].lstrip("/")
    summed = run(["docker", "run", "--rm", "-v", f"{PREFIX}-sftp-data:/data:ro", "--entrypoint", "sha256sum",
                  "aie/common:latest", f"/data/{stored}/data/big.bin"], timeout=300)
    assert summed.returncode == 0, summed.stderr
    assert summed.stdout.split()[0] == sftp["sums"]["big.bin"]
    s3 = laptop["logged"]["notebooks-s3"]
    key = "by-experiment-id/" + s3["artifact_uri"].split(":", 1)[1].lstrip("/") + "/data/big.bin"
    head = s3_client(stack["keys"]).head_object(Bucket="ai-models", Key=key)
    assert head["ContentLength"] == BIG
    # Sent in MLflow's multipart parts, straight to S3: one part per chunk that client-env set
    # (the server's own uploads would be in boto3's 8 MiB parts).
    chunk = int(laptop["env"]["MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE"])
    assert head["ETag"].strip('"').endswith(f"-{math.ceil(BIG / chunk)}"), head["ETag"]


def test_runs_are_by_the_person_who_logged_them(laptop: dict[str, Any]) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=MLFLOW_URL)
    for entry in laptop["logged"].values():
        assert client.get_run(entry["run_id"]).info.user_id == "carol"


def test_a_person_denied_an_experiment_is_refused_its_runs_and_artifacts(
        stack: dict[str, Any], laptop: dict[str, Any]) -> None:
    bob = ("bob", (stack["keys"] / "secrets" / "mlflow_users" / "bob").read_text().split()[0])
    carol = ("carol", laptop["env"]["MLFLOW_TRACKING_PASSWORD"])
    ca = tls_ca(stack["keys"])
    entry = laptop["logged"]["notebooks-s3"]
    path = entry["artifact_uri"].split(":", 1)[1].lstrip("/")
    urls = {
        "run": f"{MLFLOW_URL}/api/2.0/mlflow/runs/get?run_id={entry['run_id']}",
        "artifact": f"{MLFLOW_URL}/api/2.0/mlflow-artifacts/artifacts/{path}/data/big.bin",
        "listing": f"{MLFLOW_URL}/api/2.0/mlflow-artifacts/artifacts?path={path}/data",
    }
    assert {what: http_status(url, bob, cafile=ca) for what, url in urls.items()} == dict.fromkeys(urls, 403)
    assert http_status(urls["listing"], carol, cafile=ca) == 200
    # Bob may use the experiment he is given.
    sftp = laptop["logged"]["notebooks-sftp"]
    assert http_status(f"{MLFLOW_URL}/api/2.0/mlflow/runs/get?run_id={sftp['run_id']}", bob, cafile=ca) == 200
