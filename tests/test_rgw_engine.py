"""The rgw engine's container when it cannot serve: it stops at once and says why.

Ceph's monitor stops when its filesystem has 5% or less free (mon_data_avail_crit). The engine's
container used to wait 120 s for a monitor that had stopped at its first second, then say only that
it "did not come up", while the deployment waited up to 10 minutes (the engine's health_timeout).
Each test starts the engine's image on a small tmpfs as its data volume, as root (the entrypoint
then runs the daemons as ceph), with the state a test sets up first.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator

import pytest

from conftest import run

CONTAINER = "aierge-s3"
KEYS = {name: secrets.token_hex(16) for name in
        ("S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_CLIENT_ACCESS_KEY", "S3_CLIENT_SECRET_KEY")}
# Longer than a stopped daemon takes to be seen, far shorter than the 120 s a start may wait.
STOPPED_WITHIN = 60
# The image's own entrypoint (roles/s3/docker/rgw/Dockerfile), run after the test's setup.
ENTRYPOINT = "/usr/bin/tini -- /usr/local/sbin/aie-rgw-entrypoint"
Start = Callable[[str], tuple[int, list[str]]]


@pytest.fixture
def engine(rgw_test_image: str) -> Iterator[Start]:
    """Starts the engine with a shell command run first on its data volume (64 MiB of tmpfs);
    gives (exit code, its aie-rgw lines) once it stopped, failing if it still runs after
    STOPPED_WITHIN seconds."""

    def start(setup: str) -> tuple[int, list[str]]:
        env = [arg for name, value in KEYS.items() for arg in ("-e", f"{name}={value}")]
        started = run(["docker", "run", "-d", "--name", CONTAINER, *env, "-e", "S3_PORT=9000",
                       "-e", "S3_CAPACITY_GIB=4", "--mount", "type=tmpfs,destination=/var/lib/aie-s3,tmpfs-size=64m",
                       "--entrypoint", "bash", rgw_test_image, "-c",
                       f"set -e; cd /var/lib/aie-s3; {setup}; exec {ENTRYPOINT}"],
                      timeout=120)
        assert started.returncode == 0, started.stderr
        try:
            waited = run(["docker", "wait", CONTAINER], timeout=STOPPED_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the engine still runs {STOPPED_WITHIN} s after its start:\n"
                        + run(["docker", "logs", CONTAINER], timeout=60).stderr[-3000:])
        logs = run(["docker", "logs", CONTAINER], timeout=60)
        return int(waited.stdout), [line for line in logs.stderr.splitlines() if line.startswith("aie-rgw:")]

    run(["docker", "rm", "-f", CONTAINER], timeout=120)
    try:
        yield start
    finally:
        run(["docker", "rm", "-f", CONTAINER], timeout=120)


def test_a_data_volume_short_of_space_is_named_before_ceph_starts(engine: Start) -> None:
    # 62 of 64 MiB taken: 3% free.
    code, log = engine("fallocate -l 62M taken")
    assert code != 0
    assert any("3% free" in line and "5%" in line and "/var/lib/aie-s3" in line for line in log), log
    assert not any("creating a one-node Ceph cluster" in line for line in log), log


def test_a_monitor_that_stops_is_reported_at_once(engine: Start) -> None:
    # A cluster whose monitor store is gone (its fsid left): the monitor stops at its start.
    code, log = engine("install -d ceph/mon/ceph-a ceph/osd ceph/rgw;"
                       " python3 -c 'import uuid; print(uuid.uuid4())' >ceph/fsid")
    assert code != 0
    assert any(line.startswith("aie-rgw: the monitor stopped (exit ") for line in log), log
    assert not any("did not come up" in line for line in log), log
