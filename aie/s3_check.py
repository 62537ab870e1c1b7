"""Find S3 objects whose content does not match their ETag, and the MLflow runs that hold them.

An S3 server computes an object's ETag when it is written: the MD5 of the content for a
single PUT, and for a multipart upload the MD5 of the parts' MD5s followed by ``-<parts>``.
Reading every object back and recomputing it shows what the server now returns differs from
what it was given (the former rgw engine returned the last part repeated for every
multipart object). An object copied from that engine's store by the new one's migration has a
new ETag, computed from what was read; the ETag the former engine gave it is kept in its
metadata (`aie-dbstore-etag`), and its content is checked against that one. Runs the same on
the controller or on the S3 host (copied there by playbooks/s3_check.yml), needing only boto3:
it imports nothing from aie.

    python3 s3_check.py BUCKET [BUCKET ...]   (endpoint and keys from AIE_S3_ENDPOINT,
                                               AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
    python3 s3_check.py --settings-on-stdin BUCKET ...   (the same variables as a JSON object
                                               on stdin: never on a command line, where other
                                               users of the host could read the keys)

Prints one JSON object: counts, the corrupt objects, and the runs they belong to.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

MiB = 1 << 20
# Part sizes of common clients: boto3 / MLflow (8 MiB), the AWS CLI's minimum (5 MiB), others.
COMMON_PART_SIZES = (8 * MiB, 5 * MiB, 16 * MiB, 10 * MiB, 64 * MiB, 100 * MiB)
CHUNK = 1 * MiB
# Metadata the rgw engine's migration from its former dbstore backend gives every copy.
DBSTORE_ETAG = "aie-dbstore-etag"


def part_size_candidates(s3: Any, bucket: str, key: str, size: int, parts: int) -> list[int]:
    """Part sizes that give `parts` parts for `size` bytes: the server's word for part 1 first."""
    found: list[int] = []
    try:
        found.append(int(s3.head_object(Bucket=bucket, Key=key, PartNumber=1)["ContentLength"]))
    except ClientError:
        pass  # not every server answers partNumber requests
    found += COMMON_PART_SIZES
    return [c for c in dict.fromkeys(found) if c > 0 and -(-size // c) == parts]


class PartHasher:
    """The multipart ETag of a stream cut into parts of one size."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.digests: list[bytes] = []
        self.part = hashlib.md5(usedforsecurity=False)
        self.filled = 0

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            take = min(len(view), self.part_size - self.filled)
            self.part.update(view[:take])
            self.filled += take
            view = view[take:]
            if self.filled == self.part_size:
                self.digests.append(self.part.digest())
                self.part, self.filled = hashlib.md5(usedforsecurity=False), 0

    def etag(self) -> str:
        digests = self.digests + ([self.part.digest()] if self.filled else [])
        return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def multipart_etags(chunks: Iterator[bytes], part_sizes: list[int]) -> dict[int, str]:
    """The multipart ETag the content would have, for each part size, from one pass over it."""
    hashers = [PartHasher(size) for size in part_sizes]
    for chunk in chunks:
        for hasher in hashers:
            hasher.update(chunk)
    return {hasher.part_size: hasher.etag() for hasher in hashers}


def check_object(s3: Any, bucket: str, key: str, etag: str, size: int) -> str | None:
    """None when the content matches the ETag, else why not."""
    etag = etag.strip('"')
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    chunks = iter(lambda: body.read(CHUNK), b"")
    if "-" not in etag:
        digest = hashlib.md5(usedforsecurity=False)
        read = 0
        for chunk in chunks:
            digest.update(chunk)
            read += len(chunk)
        if read != size:
            return f"read {read} bytes of {size}"
        return None if digest.hexdigest() == etag else "content does not match its ETag"
    parts = int(etag.rsplit("-", 1)[1])
    candidates = part_size_candidates(s3, bucket, key, size, parts)
    if not candidates:
        return f"no known part size gives {parts} parts for {size} bytes: cannot check"
    computed = multipart_etags(chunks, candidates)
    return None if etag in computed.values() else f"content does not match its multipart ETag ({parts} parts)"


def original_etag(s3: Any, bucket: str, key: str, etag: str) -> tuple[str, bool]:
    """The ETag to check an object against, and whether it is a copy from the former engine."""
    recorded = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get(DBSTORE_ETAG)
    return (recorded, True) if recorded else (etag, False)


def owner(key: str) -> str | None:
    """The run (or logged model) an MLflow artifact key belongs to: `<experiment>/<run id>/artifacts/...`."""
    parts = key.split("/")
    for index in range(1, len(parts) - 1):
        if parts[index + 1] == "artifacts":
            return "/".join(parts[index - 1 : index + 1])
    return None


def main(argv: list[str]) -> int:
    if argv[:1] == ["--settings-on-stdin"]:
        os.environ.update({str(name): str(value) for name, value in json.loads(sys.stdin.read()).items()})
        argv = argv[1:]
    s3 = boto3.client(
        "s3", endpoint_url=os.environ.get("AIE_S3_ENDPOINT") or None,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
    )
    checked = total = 0
    corrupt: list[dict[str, Any]] = []
    for bucket in argv:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                etag, migrated = original_etag(s3, bucket, item["Key"], item["ETag"])
                reason = check_object(s3, bucket, item["Key"], etag, item["Size"])
                if reason and migrated:
                    reason += " (the ETag the former dbstore engine gave it)"
                checked += 1
                total += item["Size"]
                if reason:
                    corrupt.append({"bucket": bucket, "key": item["Key"], "size": item["Size"], "reason": reason,
                                    "run": owner(item["Key"])})
    runs = sorted({entry["run"] for entry in corrupt if entry["run"]})
    print(json.dumps({"objects": checked, "bytes": total, "corrupt": corrupt, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
