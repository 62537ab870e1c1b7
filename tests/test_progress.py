"""What `aie up` shows while a task runs long: a status line on a terminal, a line now and then
in a log, and the step of an image build. Synthetic runner events and a fake clock, a fake
docker, and one real playbook; no Docker needed."""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aie import runner
from aie.runner import ProgressTiming, _build_step, _Progress, docker_build_step, run_playbook
from conftest import one_play_project

BUILD = "Build the image aie/ml:latest"
ERASE = "\r\x1b[K"
# What `docker ps --no-trunc --format '{{.Command}}\t{{.Image}}\t{{.RunningFor}}'` lists while the
# legacy builder runs a RUN step (Docker 20.10), below a container of the stack.
DOCKER_PS = (
    '"/bin/sh -c \'sleep 6 && echo \\"done  with \\\\\\"quotes\\\\\\"\\"\'"\t'
    "sha256:5fb447ef896726c911f0e5d10505d6175e11253e24b08e545675f454284991ed\t3 seconds ago\n"
    '"mlflow server --host 0.0.0.0"\taie/mlflow:latest\t2 hours ago\n'
)


class Terminal(io.StringIO):
    """Output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Status lines are cut to the terminal's width: 80 for a StringIO, unless the test says."""
    monkeypatch.setattr(runner, "_width", lambda out: 200)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(name: str, host: str = "localhost", task: str = BUILD, **data: Any) -> dict[str, Any]:
    return {"event": name, "event_data": {"host": host, "task": task, **data}}


def progress(out: io.StringIO, clock: Clock, step: str | None = None, **timing: float) -> _Progress:
    return _Progress(out, verbose=False, timing=ProgressTiming(**timing), clock=clock, build_step=lambda: step)


def at(p: _Progress, clock: Clock, seconds: float, since: float = 1000.0) -> None:
    """Move the clock to `seconds` after `since`, and let the progress tick."""
    clock.now = since + seconds
    p.tick()


def test_a_terminal_gets_a_status_line_redrawn_in_place_and_erased_before_a_line() -> None:
    out, clock = Terminal(), Clock()
    p = progress(out, clock, step="RUN pip install tensorflow==2.16.1")
    p(event("playbook_on_play_start", play="Deploy"))
    p(event("runner_on_start"))
    at(p, clock, 9)
    assert out.getvalue() == "== Deploy\n"
    at(p, clock, 10)
    status = f"{ERASE}  ... 10s  {BUILD}  on localhost  (RUN pip install tensorflow==2.16.1)"
    assert out.getvalue() == "== Deploy\n" + status
    at(p, clock, 15)  # drawn 5 s ago: not yet again
    assert out.getvalue() == "== Deploy\n" + status
    at(p, clock, 65)
    assert out.getvalue().endswith(f"{ERASE}  ... 1m05s  {BUILD}  on localhost  (RUN pip install tensorflow==2.16.1)")
    # Another host's change: the status line is erased, the line printed whole, then it is back.
    p(event("runner_on_ok", host="web", task="Copy", res={"changed": True}))
    assert out.getvalue().endswith(f"(RUN pip install tensorflow==2.16.1){ERASE}  changed  web              Copy\n")
    at(p, clock, 66)
    assert out.getvalue().endswith(
        f"Copy\n{ERASE}  ... 1m06s  {BUILD}  on localhost  (RUN pip install tensorflow==2.16.1)")
    # The build ends without a line (ok, not verbose): the status line goes with it.
    p(event("runner_on_ok", res={"changed": False}))
    assert out.getvalue().endswith(f"tensorflow==2.16.1){ERASE}")
    at(p, clock, 100)
    assert out.getvalue().endswith(f"tensorflow==2.16.1){ERASE}")


def test_the_status_line_names_the_hosts_of_the_longest_task() -> None:
    out, clock = Terminal(), Clock()
    asked: list[str] = []

    def build_step() -> str:
        asked.append("docker ps")
        return "RUN make"

    p = _Progress(out, verbose=False, timing=ProgressTiming(), clock=clock, build_step=build_step)
    for host in ("node3", "node1", "node2", "node4"):
        p(event("runner_on_start", host=host, task="Build the image aie/s3:latest"))
    clock.now += 5
    p(event("runner_on_start", host="db", task="Wait for PostgreSQL"))
    at(p, clock, 20)
    # The build step is asked only of this machine's Docker engine.
    assert out.getvalue() == (
        f"{ERASE}  ... 20s  Build the image aie/s3:latest  on node1, node2, node3 +1 more  (+1 other task)")
    assert asked == []


def test_the_status_line_fits_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_width", lambda out: 40)
    out, clock = Terminal(), Clock()
    p = progress(out, clock)
    p(event("runner_on_start"))
    at(p, clock, 30)
    # 39 characters: the cursor stays on the line, which the next redraw clears.
    assert out.getvalue() == ERASE + f"  ... 30s  {BUILD}  on localhost"[:39]


def test_a_log_gets_a_plain_line_per_interval() -> None:
    out, clock = io.StringIO(), Clock()
    p = progress(out, clock, step="RUN pip install tensorflow==2.16.1", threshold=10, log_interval=30)
    p(event("runner_on_start"))
    p(event("runner_on_start", host="web", task="Pull the image"))
    for second in range(0, 101):
        at(p, clock, second)
    lines = out.getvalue().splitlines()
    assert lines == [
        f"  running  localhost        {BUILD} (10s): RUN pip install tensorflow==2.16.1",
        "  running  web              Pull the image (10s)",
        f"  running  localhost        {BUILD} (40s): RUN pip install tensorflow==2.16.1",
        "  running  web              Pull the image (40s)",
        f"  running  localhost        {BUILD} (1m10s): RUN pip install tensorflow==2.16.1",
        "  running  web              Pull the image (1m10s)",
        f"  running  localhost        {BUILD} (1m40s): RUN pip install tensorflow==2.16.1",
        "  running  web              Pull the image (1m40s)",
    ]
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


@pytest.mark.parametrize("stream", [Terminal, io.StringIO])
def test_a_task_that_ends_before_the_threshold_is_not_shown(stream: type[io.StringIO]) -> None:
    out, clock = stream(), Clock()
    p = progress(out, clock)
    p(event("runner_on_start"))
    for second in range(10):
        at(p, clock, second)
    p(event("runner_on_ok", res={"changed": True}))
    for second in range(10, 100):
        at(p, clock, second)
    assert out.getvalue() == f"  changed  localhost        {BUILD}\n"


def test_the_thread_draws_until_the_run_ends_then_stops() -> None:
    out = Terminal()
    p = _Progress(out, verbose=False, timing=ProgressTiming(threshold=0.2, terminal_interval=0.1),
                  build_step=lambda: None)
    p.start()
    try:
        assert p.ticking
        p(event("runner_on_start", task="Wait"))
        time.sleep(0.6)
        p(event("runner_on_ok", task="Wait", res={"changed": True}))
        p(event("runner_on_start", task="Wait more"))
        time.sleep(0.6)
    finally:
        p.stop()
    assert not p.ticking
    assert not [thread for thread in threading.enumerate() if thread.name == "aie-progress"]
    text = out.getvalue()
    assert f"{ERASE}  ... 0s  Wait  on localhost{ERASE}  changed  localhost        Wait\n" in text
    assert f"{ERASE}  ... 0s  Wait more  on localhost" in text
    # The run ended while Wait more ran: its status line is erased, and nothing comes after.
    assert text.endswith(ERASE)
    time.sleep(0.3)
    assert out.getvalue() == text


def test_the_build_step_is_read_from_docker_ps() -> None:
    assert _build_step(DOCKER_PS) == 'RUN sleep 6 && echo "done with \\"quotes\\""'
    # No build runs: only the stack's containers.
    assert _build_step(DOCKER_PS.splitlines(keepends=True)[1]) is None
    # A long step is cut; an exec-form step is shown as is.
    long = f'"/bin/bash -o pipefail -c \'pip install {"x" * 100}\'"\t0123456789ab\t1 minute ago\n'
    assert _build_step(long) == "RUN pip install " + "x" * 41 + "..."
    assert _build_step('"apt-get update"\t0123456789ab\t1 second ago\n') == "RUN apt-get update"


@pytest.mark.parametrize(("script", "expected"), [
    ('/bin/cat "${0%/docker}/ps.txt"', 'RUN sleep 6 && echo "done with \\"quotes\\""'),
    ("echo Cannot connect to the Docker daemon >&2; exit 1", None),
    ("exec /bin/sleep 5", None),
])
def test_the_build_step_is_none_when_docker_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, script: str, expected: str | None
) -> None:
    (tmp_path / "ps.txt").write_text(DOCKER_PS)
    docker = tmp_path / "docker"
    docker.write_text(f"#!/bin/sh\n{script}\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    started = time.monotonic()
    assert docker_build_step(timeout=0.5) == expected
    assert time.monotonic() - started < 3
    docker.unlink()
    assert docker_build_step() is None


def test_the_timing_follows_the_environment() -> None:
    assert ProgressTiming.from_environment({}) == ProgressTiming(10, 10, 30)
    environ = {"AIE_PROGRESS_THRESHOLD": "0.5", "AIE_PROGRESS_TERMINAL_INTERVAL": "soon",
               "AIE_PROGRESS_LOG_INTERVAL": "-1"}
    assert ProgressTiming.from_environment(environ) == ProgressTiming(threshold=0.5)


def test_a_real_playbook_reports_the_change_of_a_task_whose_output_is_hidden(tmp_path: Path) -> None:
    # no_log hides the whole result from ansible-runner's events, `changed` included.
    inventory = one_play_project(tmp_path, (
        "- name: Hide\n  hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: Change in secret\n      ansible.builtin.command: 'true'\n      no_log: true\n"
        "    - name: Look in secret\n      ansible.builtin.command: 'true'\n      changed_when: false\n"
        "      no_log: true\n"))
    out = io.StringIO()
    result = run_playbook("play.yml", project_dir=tmp_path, inventory=inventory, out=out)
    assert result.ok, result.failures
    assert out.getvalue().splitlines() == ["== Hide", "  changed  localhost        Change in secret"]
    assert result.changed == 1


def test_a_real_playbook_shows_its_long_task(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    inventory = one_play_project(tmp_path, (
        "- name: Wait\n  hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: Sleep a little\n      ansible.builtin.command: sleep 3\n      changed_when: false\n"
        "    - name: Be quick\n      ansible.builtin.command: 'true'\n      changed_when: false\n"))
    monkeypatch.setenv("AIE_PROGRESS_THRESHOLD", "1")
    monkeypatch.setenv("AIE_PROGRESS_LOG_INTERVAL", "1")
    out = io.StringIO()
    result = run_playbook("play.yml", project_dir=tmp_path, inventory=inventory, out=out)
    assert result.ok, result.failures
    lines = out.getvalue().splitlines()
    assert lines[0] == "== Wait", lines
    # A line a second while the command runs (a busy machine may skip one).
    pattern = r"  running  localhost        Sleep a little \(([0-9])s\)"
    seconds = [int(match[1]) for line in lines if (match := re.fullmatch(pattern, line))]
    assert len(seconds) >= 2 and seconds == sorted(set(seconds)), lines
    assert not [thread for thread in threading.enumerate() if thread.name == "aie-progress"]
