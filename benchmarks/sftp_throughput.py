"""Upload throughput of aie's SFTP artifact store against OpenSSH's ``sftp`` client.

Starts a throw-away sshd on 127.0.0.1 (``tests/sshd_server.py``), creates a large
random file and a directory of random files, and uploads each

* through the aie store, resolved by MLflow's ``get_artifact_repository("sftp://...")``
  (``log_artifact`` / ``log_artifacts``), and
* through ``sftp -b batchfile`` with the same client config (``put`` / ``put -r``),

to the same server. Every measurement includes connecting and authenticating (the
store's connection pool is emptied first) and starts by removing the previous upload;
the best of ``--repeat`` runs counts. Prints MiB/s, the aie/OpenSSH ratio and targets.

    python benchmarks/sftp_throughput.py [--file-mb 200] [--dir-files 20]
        [--dir-file-mb 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mlflow.store.artifact.artifact_repository_registry import (  # noqa: E402
    get_artifact_repository,
)

from aie.sftp_store import (  # noqa: E402
    ENV_PARALLEL,
    ENV_SSH_CONFIG,
    SFTPArtifactRepository,
    close_connections,
)
from sshd_server import HOST_ALIAS, SSHTestEnv  # noqa: E402

MIB = 1024 * 1024
TARGETS = {"single file": 0.7, "directory": 1.0}


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            block = os.urandom(min(remaining, 4 * MIB))
            f.write(block)
            remaining -= len(block)


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def best_time(repeat: int, prepare: Callable[[], None], run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        prepare()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def openssh_put(env: SSHTestEnv, batch: Path) -> None:
    subprocess.run(
        ["sftp", "-q", "-F", str(env.ssh_config), "-b", str(batch), HOST_ALIAS],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--file-mb", type=int, default=200, help="single file, MiB")
    parser.add_argument("--dir-files", type=int, default=20, help="files in the dir")
    parser.add_argument("--dir-file-mb", type=int, default=10, help="each, MiB")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="aie-sftp-bench-") as tmp:
        root = Path(tmp)
        source = root / "source"
        source.mkdir()
        big = source / "big.bin"
        write_random(big, args.file_mb * MIB)
        tree = source / "tree"
        tree.mkdir()
        for i in range(args.dir_files):
            write_random(tree / f"part_{i:03d}.bin", args.dir_file_mb * MIB)

        env = SSHTestEnv.create(root / "sshd")
        os.environ[ENV_SSH_CONFIG] = str(env.ssh_config)
        try:
            remote = env.data_dir
            repo = get_artifact_repository(env.uri(remote / "aie"))
            assert isinstance(repo, SFTPArtifactRepository), type(repo)
            connections = min(repo.max_workers, args.dir_files)

            single_batch = root / "single.batch"
            single_batch.write_text(f'put "{big}" "{remote}/openssh/big.bin"\n')
            (remote / "openssh").mkdir()
            dir_batch = root / "dir.batch"
            dir_batch.write_text(f'put -r "{tree}" "{remote}/openssh/tree"\n')

            def fresh(path: Path) -> Callable[[], None]:
                def prepare() -> None:
                    remove(path)
                    close_connections()  # aie pays for connecting, like sftp does

                return prepare

            cases = {
                "single file": (
                    f"1 x {args.file_mb} MiB",
                    big,
                    (
                        fresh(remote / "aie/big.bin"),
                        lambda: repo.log_artifact(str(big)),
                    ),
                    (
                        fresh(remote / "openssh/big.bin"),
                        lambda: openssh_put(env, single_batch),
                    ),
                    (remote / "aie/big.bin", remote / "openssh/big.bin"),
                ),
                "directory": (
                    f"{args.dir_files} x {args.dir_file_mb} MiB",
                    tree,
                    (
                        fresh(remote / "aie/tree"),
                        lambda: repo.log_artifacts(str(tree), "tree"),
                    ),
                    (
                        fresh(remote / "openssh/tree"),
                        lambda: openssh_put(env, dir_batch),
                    ),
                    (remote / "aie/tree", remote / "openssh/tree"),
                ),
            }

            rows = []
            for name, (label, src, aie_run, ssh_run, outputs) in cases.items():
                size = tree_size(src)
                aie_time = best_time(args.repeat, *aie_run)
                ssh_time = best_time(args.repeat, *ssh_run)
                for output in outputs:
                    if tree_size(output) != size:
                        raise SystemExit(f"{output}: wrong size after upload")
                aie_rate = size / MIB / aie_time
                ssh_rate = size / MIB / ssh_time
                ratio = aie_rate / ssh_rate
                target = TARGETS[name]
                result = "PASS" if ratio >= target else "BELOW"
                rows.append((name, label, aie_rate, ssh_rate, ratio, target, result))
        finally:
            close_connections()
            env.close()

    setting = os.environ.get(ENV_PARALLEL, "unset")
    print(
        f"Upload to a local OpenSSH sshd, best of {args.repeat}; {os.cpu_count()} CPUs; "
        f"{ENV_PARALLEL}={setting} -> {connections} parallel connections for the directory"
    )
    header = (
        f"{'case':<12} {'size':<16} {'aie MiB/s':>10} {'OpenSSH MiB/s':>14} {'aie/OpenSSH':>12} {'target':>8}  result"
    )
    print(header)
    print("-" * len(header))
    for name, label, aie_rate, ssh_rate, ratio, target, result in rows:
        print(
            f"{name:<12} {label:<16} {aie_rate:>10.1f} {ssh_rate:>14.1f} "
            f"{ratio:>11.2f}x {'>=' + format(target, '.1f') + 'x':>8}  {result}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
