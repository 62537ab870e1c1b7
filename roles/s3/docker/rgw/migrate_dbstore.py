#!/usr/bin/env python3
"""Move the objects of a former dbstore deployment into the new Ceph cluster.

Usage: aie-rgw-migrate-dbstore DATA_DIR (with S3_ACCESS_KEY / S3_SECRET_KEY in the environment).

The earlier rgw engine ran RADOS Gateway on its SQLite "dbstore" backend, whose multipart
objects are corrupt (every object above 8 MiB uploaded with a default S3 client). Its files
are on the same volume. This starts that gateway on 127.0.0.1:7481 and the new one on
127.0.0.1:7480, copies every bucket and object as they are, checks each copy's size, and then
moves the old files into DATA_DIR/dbstore-retired/ (kept, never deleted). Some multipart
objects cannot be read back from dbstore at all (the read hangs): each is given a bounded
time, and those that fail are named in the log and left in the retired files.

A corrupt object stays corrupt, and its copy gets a new ETag, computed from the corrupt
content: each copy keeps the ETag dbstore gave the original (computed from what the client
sent) as its metadata `aie-dbstore-etag`. Each copy is read back and checked against that
ETag with `aie s3-check`'s own code (copied into the image); the log names those that differ,
and `aie s3-check` names them and their runs later too.

Objects are spooled on the data volume (DATA_DIR/dbstore-spool, one object at a time), never
in the container's small /tmp. A migration that stops midway is taken up again at the next
start (the entrypoint runs this as long as the old files are at the volume's top): objects
already copied, with the same size and recorded ETag, are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

sys.path.insert(0, "/usr/local/lib/aie")
from s3_check import DBSTORE_ETAG as ETAG_KEY  # noqa: E402 - aie s3-check's code, in the image
from s3_check import check_object  # noqa: E402

OLD_PORT, NEW_PORT = 7481, 7480


def log(message: str) -> None:
    print(f"aie-rgw: {message}", file=sys.stderr, flush=True)


def client(port: int, attempts: int = 10):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
        aws_access_key_id=os.environ["S3_ACCESS_KEY"], aws_secret_access_key=os.environ["S3_SECRET_KEY"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": attempts},
                      connect_timeout=10, read_timeout=60),
    )


def wait_until_up(s3, port: int, process: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    for _ in range(120):
        if process.poll() is not None:
            raise SystemExit(f"the gateway on port {port} stopped (exit {process.returncode})")
        try:
            s3.list_buckets()
            return
        except Exception:  # noqa: BLE001 - not up yet, whatever the reason
            time.sleep(1)
    raise SystemExit(f"the gateway on port {port} did not answer within 120 s")


def fetch(source, bucket: str, key: str, spool: IO[bytes], size: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Read an object into spool within a bounded time; its content type and metadata.

    dbstore can answer a multipart object's GET with a trickle that never ends, which no
    socket timeout catches (each read gets a little): the read runs in a daemon thread that is
    abandoned when the time is up (2 minutes, or longer at 1 MiB/s for a large object).
    """
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            body = source.get_object(Bucket=bucket, Key=key)
            shutil.copyfileobj(body["Body"], spool, 1 << 20)
            outcome["args"] = {"ContentType": body.get("ContentType", "binary/octet-stream"),
                               "Metadata": dict(body.get("Metadata", {}))}
        except Exception as error:  # noqa: BLE001 - handed to the caller
            outcome["error"] = error

    seconds = max(120.0, size / (1 << 20))
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no complete answer within {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return dict(outcome["args"])


def already_copied(target, bucket: str, key: str, size: int, etag: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether an earlier, interrupted migration copied this object (a copy is whole or absent:
    an upload that did not complete leaves no object)."""
    try:
        head = target.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return bool(head["ContentLength"] == size and head.get("Metadata", {}).get(ETAG_KEY) == etag)


def main() -> int:
    data = Path(sys.argv[1])
    old_files = sorted(p for p in data.iterdir() if p.is_file() and p.name.startswith("dbstore"))
    log(f"moving the objects of the former dbstore engine ({', '.join(p.name for p in old_files)})")
    conf = Path(tempfile.mkdtemp()) / "ceph.conf"
    conf.write_text("[global]\n")
    dbstore = [
        "--no-mon-config", "-c", str(conf), "--rgw-backend-store", "dbstore", "--rgw-config-store", "dbstore",
        "--dbstore-db-dir", str(data), "--dbstore-config-uri", f"file:{data}/dbstore-config.db",
    ]
    common = ["-f", "--log-to-stderr=false", "--err-to-stderr=true", "--log-file="]
    old = subprocess.Popen(["radosgw", *common, *dbstore, "--rgw-frontends", f"beast endpoint=127.0.0.1:{OLD_PORT}"])
    new = subprocess.Popen(["radosgw", *common, "-n", "client.rgw", "--setuser", "ceph", "--setgroup", "ceph",
                            "--rgw-frontends", f"beast endpoint=127.0.0.1:{NEW_PORT}"])
    try:
        source, target = client(OLD_PORT, attempts=2), client(NEW_PORT)
        wait_until_up(source, OLD_PORT, old)
        wait_until_up(target, NEW_PORT, new)
        copied, skipped, unreadable, differing = 0, 0, [], []
        spool_dir = data / "dbstore-spool"
        spool_dir.mkdir(mode=0o700, exist_ok=True)
        for bucket in source.list_buckets()["Buckets"]:
            name = bucket["Name"]
            try:
                target.create_bucket(Bucket=name)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise
            for page in source.get_paginator("list_objects_v2").paginate(Bucket=name):
                for item in page.get("Contents", []):
                    where, etag = f"s3://{name}/{item['Key']}", item["ETag"].strip('"')
                    if already_copied(target, name, item["Key"], item["Size"], etag):
                        skipped += 1
                        continue
                    with tempfile.TemporaryFile(dir=spool_dir) as spool:
                        try:
                            args = fetch(source, name, item["Key"], spool, item["Size"])
                        except Exception as error:  # noqa: BLE001 - named below, the others still copied
                            unreadable.append(f"{where} ({type(error).__name__}: {error})")
                            continue
                        if spool.tell() != item["Size"]:
                            unreadable.append(f"{where} (read {spool.tell()} of {item['Size']} bytes)")
                            continue
                        spool.seek(0)
                        args["Metadata"][ETAG_KEY] = etag
                        target.upload_fileobj(spool, name, item["Key"], ExtraArgs=args)
                    copied += 1
                    reason = check_object(target, name, item["Key"], etag, item["Size"])
                    if reason:
                        differing.append(f"{where}: {reason}")
        spool_dir.rmdir()
        log(f"copied {copied} objects" + (f" ({skipped} copied by an earlier, interrupted start)" if skipped else ""))
        for entry in differing:
            log(f"copied as dbstore returned it, which differs from what it was given ({entry});"
                " aie s3-check names its run")
        for entry in unreadable:
            log(f"could not read {entry} from the former engine: left in the retired files")
    finally:
        for process in (old, new):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    retired = data / "dbstore-retired"
    retired.mkdir(exist_ok=True)
    for path in old_files:
        shutil.move(path, retired / path.name)
    log(f"the former engine's files are kept in {retired}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
