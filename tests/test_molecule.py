"""Molecule scenarios: the shared roles on a bare test host, and site.yml across four hosts (each
service role on a test host of its own).

Every test host is a container with its own Docker engine and sshd (molecule/resources). Both
scenarios run check mode on the fresh hosts, converge, idempotence (a second converge with
changed=0 on every host) and verify. `prerequisites` reaches its host with docker exec;
`multihost` reaches its hosts over SSH at their addresses on the scenario's network, as a login
user with sudo and strict host key checking (as a deployment's inventory does), and its
idempotence run is the no-op deployment across the 4 hosts, whose wall time is printed. Docker
Desktop's VM keeps those addresses from a Mac: there `multihost` is skipped.
"""

from __future__ import annotations

import re
import sys
import time

import pytest

from conftest import BIN, PROJECT, building, require, run

SCENARIOS = ["prerequisites", "multihost"]
STEPS = {"prerequisites": ("check", "converge", "idempotence", "verify"),
         "multihost": ("check", "converge", "idempotence", "verify")}
# The ansible.posix.timer callback's line at the end of each playbook run (.config/molecule).
PLAYBOOK_TIME = re.compile(r"Playbook run took (\d+) days, (\d+) hours, (\d+) minutes, (\d+) seconds")


def remove_engine_volumes(scenario: str) -> None:
    """The test hosts keep their engine's state in named volumes; start and end clean.

    Test hosts left running by an interrupted run hold their volumes (which `docker volume rm`
    then refuses, and the next run would reuse): they are removed first."""
    prefix = "aie-mh-" if scenario == "multihost" else f"aie-m-{scenario}"
    hosts = run(["docker", "ps", "-a", "--format", "{{.Names}}"], timeout=120).stdout.split()
    leftover = [name for name in hosts if name.startswith(prefix)]
    if leftover:
        run(["docker", "rm", "-f", *leftover], timeout=300)
    names = run(["docker", "volume", "ls", "-q"], timeout=120).stdout.split()
    stale = [name for name in names if name.startswith(prefix) and name.endswith("-docker")]
    if stale:
        removed = run(["docker", "volume", "rm", "-f", *stale], timeout=300)
        assert removed.returncode == 0, f"cannot remove the test hosts' engine volumes: {removed.stderr}"


def idempotence_seconds(scenario: str, output: str) -> int | None:
    """The wall time of the idempotence step's playbook run: the first timer line after the step
    starts (None when the step did not run to its end)."""
    start = output.find(f"{scenario} ➜ idempotence:")
    found = PLAYBOOK_TIME.search(output, start) if start >= 0 else None
    if found is None:
        return None
    days, hours, minutes, seconds = (int(part) for part in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def failure_summary(output: str) -> str:
    """What failed: each failed task's lines (Molecule's own tail is mostly the clean-up)."""
    lines = output.splitlines()
    failed = [i for i, line in enumerate(lines) if re.search(r"fatal: |failed: \[|aie: error:", line)]
    shown = [lines[j] for i in failed[:5] for j in range(max(0, i - 3), min(len(lines), i + 12))]
    return "\n".join(shown)[-8000:] + "\n...\n" + output[-2500:]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, common_image: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    if scenario == "multihost":
        # The controller reaches the test hosts at their addresses on the scenario's Docker
        # network, which on a Mac is inside Docker Desktop's VM.
        require(sys.platform != "darwin",
                "the multihost scenario's addresses (172.30.87.x, a Docker network) reachable from the controller")
        # The test hosts are given the controller's images (molecule/resources/prepare.yml): a
        # deployment building them meanwhile (the end-to-end stack's first `aie up`, on a machine
        # with no images yet) is waited for, else each test host would build the missing ones
        # again, four builds at once beside it.
        with building(tmp_path_factory):
            pass
    # The test hosts are built FROM the base image.
    logs = PROJECT / "test-artifacts"
    logs.mkdir(exist_ok=True)
    remove_engine_volumes(scenario)
    started = time.perf_counter()
    try:
        result = run([str(BIN / "molecule"), "test", "-s", scenario], timeout=2400)
    finally:
        remove_engine_volumes(scenario)
    seconds = time.perf_counter() - started
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    (logs / f"molecule-{scenario}.log").write_text(output)
    print(f"molecule scenario {scenario}: {seconds:.0f} s")
    noop = idempotence_seconds(scenario, output)
    if scenario == "multihost" and noop is not None:
        print(f"multihost no-op (idempotence) across 4 hosts: {noop} s")
    assert result.returncode == 0, failure_summary(output)
    # Each step of the scenario's sequence ran and passed: check mode on the fresh hosts, converge,
    # idempotence (changed=0 on a second converge) and verify.
    for step in STEPS[scenario]:
        assert f"{scenario} ➜ {step}: Executed: Successful" in output, step
    assert noop is not None, "no playbook run time after the idempotence step started"
