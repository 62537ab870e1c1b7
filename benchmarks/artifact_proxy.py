#!/usr/bin/env python3
"""Upload speed through MLflow's artifact proxy against the stores directly, on a deployed stack.

For one large file (256 MiB) and a folder of small files (200), each uploaded

* through MLflow (``mlflow-artifacts:/``, as a laptop with ``aie client-env``'s settings: the
  server streams SFTP uploads to the SFTP server; large S3 files go in parts, straight to S3, on
  URLs the server signs), into the experiments ``notebooks-sftp`` and ``notebooks-s3``, and
* directly with the stores' own clients and the deployment's client accounts (aie's SFTP store
  over the published SFTP port, MLflow's S3 store against the published S3 port),

prints MiB/s (the best of ``--repeat``) and the ratio proxy/direct. The target: at least 0.8 of
direct for the large file. The last line is the figures as JSON.

    python benchmarks/artifact_proxy.py                 # the local stack (make up), files/keys
    python benchmarks/artifact_proxy.py --keys /tmp/e2e/keys --mlflow https://127.0.0.1:15500 \\
        --s3 https://127.0.0.1:19000 --sftp 127.0.0.1:12222

Everything uploaded is deleted afterwards (the runs stay, tagged ``aie.benchmark``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
sys.path.insert(0, str(PROJECT))

from aie.cli import MULTIPART_CHUNK, MULTIPART_MINIMUM, keys_layout  # noqa: E402

# Where the keys folder keeps secrets and the CA: the layout the playbooks and the CLI read.
LAYOUT = keys_layout(PROJECT)


def secret(keys: Path, name: str) -> str:
    return (keys / LAYOUT["secrets"] / name).read_text().split()[0]


def make_files(folder: Path, large_mib: int, small_count: int) -> tuple[Path, Path]:
    large = folder / "large.bin"
    with large.open("wb") as handle:
        for _ in range(large_mib):
            handle.write(os.urandom(MiB))
    small = folder / "small"
    small.mkdir()
    for index in range(small_count):
        (small / f"part-{index:03d}.bin").write_bytes(os.urandom(4096 + 256 * index))
    return large, small


def timed(repeat: int, upload: Callable[[int], None]) -> float:
    """The best of `repeat` uploads, in seconds (each to a new place)."""
    best = float("inf")
    for attempt in range(repeat):
        start = time.perf_counter()
        upload(attempt)
        best = min(best, time.perf_counter() - start)
    return best


def through_mlflow(args: argparse.Namespace, large: Path, small: Path) -> dict[str, dict[str, float]]:
    keys = Path(args.keys)
    os.environ.update({
        "MLFLOW_TRACKING_URI": args.mlflow,
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": secret(keys, "mlflow_admin_password"),
        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(keys / LAYOUT["ca"]),
        "REQUESTS_CA_BUNDLE": str(keys / LAYOUT["ca"]),
        "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
        "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(MULTIPART_MINIMUM),
        "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": str(MULTIPART_CHUNK),
    })
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    times: dict[str, dict[str, float]] = {}
    for store in ("sftp", "s3"):
        experiment = mlflow.set_experiment(f"notebooks-{store}")
        if not experiment.artifact_location.startswith("mlflow-artifacts:"):
            raise SystemExit(f"notebooks-{store} is not proxied ({experiment.artifact_location}): deploy anew")
        with mlflow.start_run(tags={"aie.benchmark": "artifact_proxy"}):
            times[store] = {
                "large": timed(args.repeat, lambda i: mlflow.log_artifact(str(large), f"large-{i}")),
                "small": timed(args.repeat, lambda i: mlflow.log_artifacts(str(small), f"small-{i}")),
            }
            get_artifact_repository(mlflow.get_artifact_uri()).delete_artifacts()
    return times


def ssh_config(args: argparse.Namespace, folder: Path) -> Path:
    keys = Path(args.keys)
    user = next(line.split()[1] for line in (keys / "ssh_config" / args.host).read_text().splitlines()
                if line.strip().startswith("User "))
    host, port = args.sftp.rsplit(":", 1)
    config = folder / "ssh_config"
    config.write_text(f"Host bench\n    HostName {host}\n    Port {port}\n    User {user}\n"
                      f"    IdentityFile {keys / 'sftp_client_ed25519'}\n    IdentitiesOnly yes\n"
                      f"    UserKnownHostsFile {keys / 'known_hosts'}\n    StrictHostKeyChecking yes\n")
    return config


def directly(args: argparse.Namespace, large: Path, small: Path, folder: Path) -> dict[str, dict[str, float]]:
    keys = Path(args.keys)
    os.environ.update({
        "AIE_SSH_CONFIG": str(ssh_config(args, folder)),
        "MLFLOW_S3_ENDPOINT_URL": args.s3,
        "AWS_ACCESS_KEY_ID": secret(keys, "s3_client_access_key"),
        "AWS_SECRET_ACCESS_KEY": secret(keys, "s3_client_secret_key"),
        "AWS_CA_BUNDLE": str(keys / LAYOUT["ca"]),
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    roots = {"sftp": f"sftp://bench/artifacts/bench-direct/{uuid.uuid4().hex}",
             "s3": f"s3://ai-models/bench-direct/{uuid.uuid4().hex}"}
    times: dict[str, dict[str, float]] = {}
    for store, root in roots.items():
        repository: Any = get_artifact_repository(root)
        times[store] = {
            "large": timed(args.repeat, lambda i, r=repository: r.log_artifact(str(large), f"large-{i}")),
            "small": timed(args.repeat, lambda i, r=repository: r.log_artifacts(str(small), f"small-{i}")),
        }
        repository.delete_artifacts()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", default=str(PROJECT / "files" / "keys"), help="the deployment's keys folder")
    parser.add_argument("--host", default="localhost", help="the inventory host whose SFTP account is used")
    parser.add_argument("--mlflow", default="https://127.0.0.1:5500")
    parser.add_argument("--s3", default="https://127.0.0.1:9000")
    parser.add_argument("--sftp", default="127.0.0.1:2222")
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--small-files", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="aie-bench-"))
    try:
        large, small = make_files(folder, args.large_mib, args.small_files)
        small_mib = sum(path.stat().st_size for path in small.iterdir()) / MiB
        proxied = through_mlflow(args, large, small)
        direct = directly(args, large, small, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    sizes = {"large": float(args.large_mib), "small": small_mib}
    figures: dict[str, Any] = {}
    print(f"{'store':<6}{'what':<32}{'proxy MiB/s':>12}{'direct MiB/s':>13}{'ratio':>7}")
    for store in ("sftp", "s3"):
        for what, label in (("large", f"one {args.large_mib} MiB file"),
                            ("small", f"{args.small_files} small files ({small_mib:.1f} MiB)")):
            proxy_rate, direct_rate = sizes[what] / proxied[store][what], sizes[what] / direct[store][what]
            ratio = proxy_rate / direct_rate
            figures[f"{store}_{what}"] = {"proxy_mib_s": round(proxy_rate, 1), "direct_mib_s": round(direct_rate, 1),
                                          "ratio": round(ratio, 2)}
            print(f"{store:<6}{label:<32}{proxy_rate:>12.1f}{direct_rate:>13.1f}{ratio:>7.2f}")
    for store in ("sftp", "s3"):
        ratio = figures[f"{store}_large"]["ratio"]
        print(f"target {store}, large file: proxy >= 0.8 x direct: {'met' if ratio >= 0.8 else 'NOT met'} ({ratio})")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
