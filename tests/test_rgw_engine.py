"""The rgw engine when it cannot serve: it stops at once and says why, and a deployment does not
start it on a disk it would stop on.

Ceph's monitor stops when its filesystem has 5% or less free (mon_data_avail_crit). The engine's
container used to wait 120 s for a monitor that had stopped at its first second, then say only that
it "did not come up", while the deployment waited up to 10 minutes (the engine's health_timeout).
Each test starts the engine's image on a small tmpfs as its data volume, as root (the entrypoint
then runs the daemons as ceph), with the state a test sets up first; the last runs the service
role's preparation step (roles/service/files/prepare.sh) as a deployment runs it for the engine.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator

import pytest
import yaml

from conftest import PROJECT, run

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


def test_the_deployment_refuses_to_start_the_engine_on_a_disk_it_would_stop_on(rgw_test_image: str) -> None:
    engine = yaml.safe_load((PROJECT / "roles/s3/defaults/main.yml").read_text())["s3_builtin_engines"]["rgw"]
    assert engine["min_free_percent"] == 5

    def prepare(taken_mib: int) -> subprocess.CompletedProcess[str]:
        """prepare.sh as the service role runs it before the engine's container is created
        (roles/service/tasks/prepare.yml), the data volume a 64 MiB tmpfs with taken_mib used."""
        script = (PROJECT / "roles/service/files/prepare.sh").read_text()
        return run(["docker", "run", "--rm", "--user", "0:0", "--cap-drop", "ALL", "--cap-add", "CHOWN",
                    "--cap-add", "DAC_OVERRIDE", "--cap-add", "FOWNER", "--network", "none",
                    "-e", f"AIE_USER={engine['security']['user']}", "-e", f"AIE_OWNED={engine['data']}",
                    "-e", f"AIE_MIN_FREE={engine['min_free_percent']}",
                    "--tmpfs", "/etc/aie.host", "--tmpfs", "/etc/aie",
                    "--mount", f"type=tmpfs,destination={engine['data']},tmpfs-size=64m",
                    "--entrypoint", "sh", rgw_test_image, "-c",
                    f"fallocate -l {taken_mib}M {engine['data']}/taken && exec sh -c \"$0\" prepare", script],
                   timeout=120)

    refused = prepare(62)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert (f"prepare: the filesystem of {engine['data']} has 3% free (2 MiB of 64 MiB), and this service stops at 5%"
            in refused.stderr), refused.stderr
    # With room enough, the step hands the folder to the engine's user, as always.
    prepared = prepare(32)
    assert prepared.returncode == 0 and "changed" in prepared.stdout, prepared.stdout + prepared.stderr
