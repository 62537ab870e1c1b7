"""Molecule scenarios: the shared roles on a bare test host, and site.yml across four hosts (each
service role on a test host of its own).

Every test host is a container with its own Docker engine and sshd (molecule/resources);
`prerequisites` runs check mode, converge and idempotence (changed=0); `multihost` converges
across the hosts and runs a user-like verify (check mode and changed=0 are asserted on the
single-host stacks).
"""

from __future__ import annotations

import re
import time

import pytest

from conftest import BIN, PROJECT, run

SCENARIOS = ["prerequisites", "multihost"]
STEPS = {"prerequisites": ("check", "converge", "idempotence", "verify"), "multihost": ("converge", "verify")}


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


def failure_summary(output: str) -> str:
    """What failed: each failed task's lines (Molecule's own tail is mostly the clean-up)."""
    lines = output.splitlines()
    failed = [i for i, line in enumerate(lines) if re.search(r"fatal: |failed: \[|aie: error:", line)]
    shown = [lines[j] for i in failed[:5] for j in range(max(0, i - 3), min(len(lines), i + 12))]
    return "\n".join(shown)[-8000:] + "\n...\n" + output[-2500:]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, common_image: None) -> None:
    # The test hosts are built FROM the base image, and given the controller's images.
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
    assert result.returncode == 0, failure_summary(output)
    # Each step of the scenario's sequence ran and passed: check mode, idempotence (changed=0 on
    # a second converge) and verify on prerequisites; converge and verify on multihost.
    for step in STEPS[scenario]:
        assert f"{scenario} ➜ {step}: Executed: Successful" in output, step
