"""S3 under real use, on the deployed single-host stack: every byte written is read back.

boto3 with its default settings (multipart above 8 MiB, 8 MiB parts, 10 threads per
transfer) uploads objects of 9 to 64 MiB from several clients at once; MLflow logs a 100 MiB
artifact, a model above 8 MiB (loaded back, it predicts the same) and a folder of 1,200 files
(listing pages past 1,000 keys). Every object is read back and compared by sha256: zero
failures and zero differing bytes. Bounded: a fixed number of uploads under boto3's own
connect and read timeouts, and a timeout on the MLflow script.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from conftest import PORTS, PREFIX, PROJECT, aie, http_status, jupyter_exec, run, s3_client, tls_ca

# The benchmark's workload: the same objects, measured there, asserted here.
sys.path.insert(0, str(PROJECT / "benchmarks"))
from s3_integrity import SIZES, MiB, payload  # noqa: E402

UPLOADS = 100
CLIENTS = 4
BUCKET = "ai-models"
KEY_PREFIX = "stress-test"


def test_multipart_uploads_from_several_clients_read_back_whole(stack: dict[str, Any]) -> None:
    source = os.urandom(64 * MiB)
    failures: list[str] = []

    def work(client_index: int) -> list[tuple[str, str, str]]:
        s3 = s3_client(stack["keys"])  # one client per thread, boto3's defaults
        done = []
        for index in range(client_index, UPLOADS, CLIENTS):
            key = f"{KEY_PREFIX}/{index:03d}.bin"
            data = payload(index, source)
            try:
                s3.upload_fileobj(io.BytesIO(data), BUCKET, key)
                back = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                head = s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-9")["Body"].read()
                assert head == data[:10], f"{key}: the first bytes differ"
                done.append((key, hashlib.sha256(data).hexdigest(), hashlib.sha256(back).hexdigest()))
                s3.delete_object(Bucket=BUCKET, Key=key)
            except Exception as error:  # noqa: BLE001 - every failure is counted and shown
                failures.append(f"{key}: {error!r}")
        return done

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [item for batch in pool.map(work, range(CLIENTS)) for item in batch]
    differing = [key for key, sent, received in results if sent != received]
    total = sum(SIZES[i % len(SIZES)] for i in range(UPLOADS))
    print(f"s3 stress: {UPLOADS} multipart uploads ({total / MiB:.0f} MiB) from {CLIENTS} clients: "
          f"{len(failures)} failed, {len(differing)} differing")
    assert failures == []
    assert differing == []
    assert len(results) == UPLOADS


# Overwrites the first bytes of a multipart object's first part inside the OSD, as a failing disk
# would: the S3 server keeps reporting the ETag of what was uploaded.
CORRUPT_PART = r"""
set -eu
pool=default.rgw.buckets.data
oid=$(rados -p "$pool" ls | grep "__multipart_.*$1.*\.1\$" | head -n 1)
[ -n "$oid" ]
rados -p "$pool" get "$oid" /tmp/aie-part
printf 'aie-corrupted!!!' | dd of=/tmp/aie-part conv=notrunc status=none
rados -p "$pool" put "$oid" /tmp/aie-part
rm /tmp/aie-part
"""


def test_s3_check_names_the_runs_that_hold_corrupt_objects(stack: dict[str, Any]) -> None:
    s3 = s3_client(stack["keys"])
    bad = "notebooks-s3/0badc0de0badc0de/artifacts/weights.bin"
    good = "notebooks-s3/600d600d600d600d/artifacts/weights.bin"
    for key in (bad, good):
        s3.upload_fileobj(io.BytesIO(os.urandom(9 * MiB)), BUCKET, key)
    try:
        clean = aie("s3-check", "-e", stack["extra"], timeout=600)
        assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-2000:]
        assert " 0 corrupt" in clean.stdout, clean.stdout
        corrupted = run(["docker", "exec", f"{PREFIX}-s3", "bash", "-c", CORRUPT_PART, "-", "0badc0de"], timeout=120)
        assert corrupted.returncode == 0, corrupted.stderr
        found = aie("s3-check", "-e", stack["extra"], timeout=600)
        print(found.stdout)
        assert found.returncode == 1, found.stdout[-2000:] + found.stderr[-2000:]
        assert " 1 corrupt" in found.stdout
        assert f"s3://{BUCKET}/{bad}: content does not match its multipart ETag (2 parts)" in found.stdout
        assert "run with corrupt artifacts: notebooks-s3/0badc0de0badc0de" in found.stdout
        assert "600d600d" not in found.stdout
    finally:
        for key in (bad, good):
            s3.delete_object(Bucket=BUCKET, Key=key)


# MLflow, as a notebook uses it, against the S3 experiment.
MLFLOW_LARGE = r"""
import hashlib, json, os, tempfile
import numpy as np
import mlflow
from sklearn.linear_model import LinearRegression

def sha(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

def tree(folder):
    return {os.path.relpath(os.path.join(r, f), folder): sha(os.path.join(r, f))
            for r, _, files in os.walk(folder) for f in files}

mlflow.set_experiment("notebooks-s3")
work = tempfile.mkdtemp()
big = os.path.join(work, "data.bin")
with open(big, "wb") as handle:
    for _ in range(100):
        handle.write(os.urandom(1 << 20))
many = os.path.join(work, "many")
os.makedirs(many)
for index in range(1200):
    with open(os.path.join(many, f"part-{index:04d}.txt"), "w") as handle:
        handle.write(f"{index} {os.urandom(8).hex()}\n")
rng = np.random.default_rng(7)
# 1,100 outputs of 1,100 features: a 9.2 MiB coefficient matrix.
features = rng.random((1200, 1100))
model = LinearRegression().fit(features, features @ rng.random((1100, 1100)))
with mlflow.start_run() as run:
    mlflow.log_artifact(big, artifact_path="large")
    mlflow.log_artifacts(many, artifact_path="many")
    info = mlflow.sklearn.log_model(model, name="linear")
back = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="large", dst_path=tempfile.mkdtemp())
listed = mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="many")
many_back = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="many",
                                                dst_path=tempfile.mkdtemp())
model_files = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tempfile.mkdtemp())
loaded = mlflow.pyfunc.load_model(info.model_uri)
probe = features[:50]
print(json.dumps({
    "large_equal": sha(big) == sha(os.path.join(back, "data.bin")),
    "listed": len(listed),
    "many_equal": tree(many) == tree(many_back),
    "model_bytes": sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(model_files) for f in fs),
    "same_predictions": bool(np.array_equal(model.predict(probe), loaded.predict(probe))),
}))
"""


def test_mlflow_large_artifacts_models_and_many_files_on_s3(stack: dict[str, Any]) -> None:
    result = jupyter_exec("python", "-c", MLFLOW_LARGE, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"mlflow on s3: {found}")
    assert found["large_equal"], "the 100 MiB artifact read back differs"
    assert found["listed"] == 1200, "listing does not page past 1,000 keys"
    assert found["many_equal"], "the 1,200 files read back differ"
    assert found["model_bytes"] > 8 * MiB
    assert found["same_predictions"]


def test_s3_refuses_requests_without_the_keys(stack: dict[str, Any]) -> None:
    key = "stress-test/private.bin"
    s3_client(stack["keys"]).put_object(Bucket=BUCKET, Key=key, Body=b"private")
    try:
        for path in (f"/{BUCKET}/{key}", f"/{BUCKET}"):  # an object, the bucket's listing
            assert http_status(f"https://127.0.0.1:{PORTS['aie_s3_port']}{path}", cafile=tls_ca(stack["keys"])) == 403
        wrong = boto3.client(
            "s3", endpoint_url=f"https://127.0.0.1:{PORTS['aie_s3_port']}", region_name="us-east-1",
            verify=str(tls_ca(stack["keys"])),
            aws_access_key_id=(stack["keys"] / "secrets" / "s3_access_key").read_text().split()[0],
            aws_secret_access_key="not-the-secret-key-of-this-deployment",
        )
        with pytest.raises(ClientError) as denied:
            wrong.get_object(Bucket=BUCKET, Key=key)
        assert denied.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    finally:
        s3_client(stack["keys"]).delete_object(Bucket=BUCKET, Key=key)
