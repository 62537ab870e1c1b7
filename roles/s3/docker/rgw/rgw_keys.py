#!/usr/bin/python3
"""Give an S3 user of the gateway exactly one key pair, read from the environment.

Usage: aie-rgw-keys UID ACCESS_VARIABLE SECRET_VARIABLE

radosgw-admin takes a secret key only on its command line (`--secret`), where every process of
the host can read it (`ps`). Instead, the user's metadata is read (`radosgw-admin metadata get`),
its keys replaced and the record written back on radosgw-admin's stdin (`metadata put`), which
also updates the gateway's index of access keys. Prints "changed" when the keys were replaced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def admin(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["timeout", "120", "radosgw-admin", *args], input=stdin, capture_output=True,
                          text=True, check=True).stdout


def main(uid: str, access_variable: str, secret_variable: str) -> int:
    record = json.loads(admin("metadata", "get", f"user:{uid}"))
    want = [{"user": uid, "access_key": os.environ[access_variable], "secret_key": os.environ[secret_variable]}]
    have = [{name: key.get(name) for name in ("user", "access_key", "secret_key")} for key in record["data"]["keys"]]
    if have == want:
        return 0
    record["data"]["keys"] = want
    admin("metadata", "put", f"user:{uid}", stdin=json.dumps(record))
    print("changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
