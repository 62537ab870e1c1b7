"""Failure and corruption rates of multipart uploads, and MLflow's upload speed against boto3's.

Against one S3 server (by default the deployed local stack's, with the generated keys):

1. ``--uploads`` objects of 9 to 64 MiB uploaded with boto3's defaults (multipart above
   8 MiB, 10 threads per transfer) from ``--clients`` clients at once, each read back and
   compared by sha256: prints how many failed and how many came back different;
2. one ``--file-mib`` file uploaded with boto3's ``upload_file`` and through MLflow's S3
   artifact repository (what ``mlflow.log_artifact`` runs), best of ``--repeat``: MiB/s each.

Every object it writes is deleted again.

    python benchmarks/s3_integrity.py [--endpoint URL] [--keys-dir files/keys] [--bucket ai-models]
        [--uploads 48] [--clients 4] [--file-mib 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

MiB = 1 << 20
# 9 to 64 MiB: every one above boto3's 8 MiB multipart threshold, 2 to 8 parts.
SIZES = [9 * MiB, 12 * MiB, 17 * MiB + 12345, 24 * MiB, 33 * MiB + 1, 64 * MiB]
PREFIX = "aie-benchmark"


def payload(index: int, source: bytes) -> bytes:
    """Distinct content per object and per part: a rotation of random bytes, tagged with the index.
    (tests/test_s3_stress.py uploads the same objects.)"""
    size = SIZES[index % len(SIZES)]
    start = (index * 7919 * 4096) % len(source)
    rotated = source[start:] + source[:start]
    return (index.to_bytes(8, "big") + rotated)[:size]


def client(args: argparse.Namespace) -> Any:
    return boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1", verify=str(args.ca),
                        config=Config(s3={"addressing_style": "path"}))


def integrity(args: argparse.Namespace) -> None:
    source = os.urandom(64 * MiB)
    failed: list[str] = []
    differing: list[str] = []

    def work(first: int) -> None:
        s3 = client(args)
        for index in range(first, args.uploads, args.clients):
            key = f"{PREFIX}/{index:04d}.bin"
            data = payload(index, source)
            try:
                s3.upload_fileobj(io.BytesIO(data), args.bucket, key)
                back = s3.get_object(Bucket=args.bucket, Key=key)["Body"].read()
                if hashlib.sha256(back).digest() != hashlib.sha256(data).digest():
                    differing.append(key)
                s3.delete_object(Bucket=args.bucket, Key=key)
            except Exception as error:  # noqa: BLE001 - counted and shown
                failed.append(f"{key}: {type(error).__name__}: {str(error)[:120]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(work, range(args.clients)))
    seconds = time.perf_counter() - started
    total = sum(SIZES[i % len(SIZES)] for i in range(args.uploads)) / MiB
    ok = args.uploads - len(failed)
    print(f"multipart uploads: {args.uploads} of 9-64 MiB ({total:.0f} MiB) from {args.clients} clients "
          f"in {seconds:.1f} s")
    print(f"  failed:    {len(failed)}/{args.uploads} ({100 * len(failed) / args.uploads:.1f} %)")
    print(f"  corrupted: {len(differing)}/{ok} read back ({100 * len(differing) / max(ok, 1):.1f} %)")
    for line in failed[:5]:
        print(f"  {line}")


def throughput(args: argparse.Namespace) -> None:
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    os.environ["MLFLOW_S3_ENDPOINT_URL"] = args.endpoint
    work = Path(tempfile.mkdtemp())
    path = work / "artifact.bin"
    with path.open("wb") as handle:
        for _ in range(args.file_mib):
            handle.write(os.urandom(MiB))
    s3 = client(args)
    repo = S3ArtifactRepository(f"s3://{args.bucket}/{PREFIX}/mlflow")

    def best(upload: Any) -> float:
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            try:
                upload()
            except Exception as error:  # noqa: BLE001 - a failed upload is reported, not timed
                print(f"  upload failed: {type(error).__name__}: {str(error)[:160]}")
                continue
            times.append(time.perf_counter() - started)
        return args.file_mib / min(times) if times else 0.0

    raw = best(lambda: s3.upload_file(str(path), args.bucket, f"{PREFIX}/boto3/artifact.bin"))
    logged = best(lambda: repo.log_artifact(str(path)))
    for key in (f"{PREFIX}/boto3/artifact.bin", f"{PREFIX}/mlflow/artifact.bin"):
        s3.delete_object(Bucket=args.bucket, Key=key)  # absent after a failed upload: S3 says nothing
    print(f"upload of one {args.file_mib} MiB file, best of {args.repeat}:")
    print(f"  boto3 upload_file:                {raw:7.1f} MiB/s")
    print(f"  MLflow log_artifact (S3 store):   {logged:7.1f} MiB/s ({100 * logged / max(raw, 1e-9):.0f} % of boto3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default="https://127.0.0.1:9000")
    parser.add_argument("--keys-dir", type=Path, default=Path(__file__).resolve().parents[1] / "files/keys")
    parser.add_argument("--ca", type=Path, help="CA bundle of the endpoint (default: the keys folder's tls/ca.pem)")
    parser.add_argument("--bucket", default="ai-models")
    parser.add_argument("--uploads", type=int, default=48)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--file-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    secrets = args.keys_dir / "secrets"
    args.ca = args.ca or args.keys_dir / "tls" / "ca.pem"
    # MLflow's S3 store (throughput below) checks the server's certificate against it too.
    os.environ.setdefault("AWS_CA_BUNDLE", str(args.ca))
    # The artifact clients' account, the one MLflow and the notebooks use.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", (secrets / "s3_client_access_key").read_text().split()[0])
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", (secrets / "s3_client_secret_key").read_text().split()[0])
    print(f"S3 server: {args.endpoint}, bucket {args.bucket}")
    integrity(args)
    throughput(args)


if __name__ == "__main__":
    main()
