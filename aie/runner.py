"""Run the project's playbooks through ansible-runner with concise progress and clear errors."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import ansible_runner

# Events that say how a task went on a host, and the word printed for each.
_OUTCOMES = {
    "runner_on_ok": "ok",
    "runner_on_failed": "FAILED",
    "runner_on_unreachable": "UNREACHABLE",
}
# Events that end a task on a host (runner_on_start began it).
# Terminal colour codes, as in the stdout of ansible-runner's events.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_ENDS = ("runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable")
# Moves to the start of the terminal's line and clears it.
_ERASE = "\r\x1b[K"
# Tasks that build an image (roles/service/tasks/build.yml), on the hosts whose Docker engine is
# this machine's: while they run long, the build's current step is shown too.
_BUILD_TASK = "Build the image"
_LOCAL_HOSTS = ("localhost", "127.0.0.1")
_STEP_WIDTH = 60
_PROBE_TIMEOUT = 2.0
# An image ID (what the legacy builder runs a step's container from), not an image name.
_IMAGE_ID = re.compile(r"(sha256:)?[0-9a-f]{12,64}")


@dataclass(frozen=True)
class ProgressTiming:
    """When the progress shows the tasks that run long, in seconds: a task is shown once it has
    run `threshold`; then a terminal's status line is redrawn every `terminal_interval`, and
    output that is no terminal (a log) gets a line every `log_interval`."""

    threshold: float = 10.0
    terminal_interval: float = 10.0
    log_interval: float = 30.0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ProgressTiming:
        """The defaults, each replaced by its variable AIE_PROGRESS_THRESHOLD,
        AIE_PROGRESS_TERMINAL_INTERVAL or AIE_PROGRESS_LOG_INTERVAL when that holds a number of
        seconds above zero (any other value is ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, float] = {}
        for name in ("threshold", "terminal_interval", "log_interval"):
            try:
                value = float(environ.get(f"AIE_PROGRESS_{name.upper()}", ""))
            except ValueError:
                continue
            if 0 < value < float("inf"):
                values[name] = value
        return cls(**values)


@dataclass
class _Running:
    """A task running on a host: since when (on the progress's clock), and when a log next gets a
    line about it."""

    task: str
    since: float
    next_line: float


@dataclass
class PlaybookResult:
    """What a playbook run produced: its exit code, totals and the first failure."""

    rc: int
    status: str
    changed: int = 0
    failures: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "successful"


def find_project_dir(start: Path | None = None) -> Path:
    """The project folder: the nearest folder holding site.yml and roles/, from `start`
    (default: the working directory) upwards, else the one this package was installed from."""
    candidates = [start or Path.cwd()]
    candidates += list(candidates[0].resolve().parents)
    candidates.append(Path(__file__).resolve().parent.parent)
    for candidate in candidates:
        if (candidate / "site.yml").is_file() and (candidate / "roles").is_dir():
            return candidate.resolve()
    raise FileNotFoundError(
        "cannot find the aie project (a folder with site.yml and roles/); "
        "run aie from inside it or pass --project-dir"
    )


class _Progress:
    """Turns runner events into one line per task and host, and remembers failures. Between
    start() and stop() a thread shows the tasks that run long: a status line redrawn in place on
    a terminal, a line now and then in a log."""

    def __init__(
        self,
        out: TextIO,
        verbose: bool,
        timing: ProgressTiming | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        build_step: Callable[[], str | None] | None = None,
    ) -> None:
        self.out = out
        self.verbose = verbose
        self.timing = timing or ProgressTiming()
        self.clock = clock
        # What an image build on this machine runs (docker_build_step); a test passes its own.
        self.build_step = build_step or docker_build_step
        # (host, line) of each failure: a host that goes on with another task had it rescued
        # (block/rescue), and it is forgotten; the ones left stopped the run.
        self._failures: list[tuple[str, str]] = []
        self.facts: dict[str, Any] = {}
        self._terminal = _is_terminal(out)
        # Guards what follows and the output: the event handler and the thread write whole lines.
        self._lock = threading.Lock()
        # The task each host runs (a host runs one at a time, whatever the strategy).
        self._running: dict[str, _Running] = {}
        # The (host, task) pairs the terminal's status line shows, () when it is erased, and when
        # it was drawn.
        self._shown: tuple[tuple[str, str], ...] = ()
        self._drawn_at = 0.0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def failures(self) -> list[str]:
        return [line for _, line in self._failures]

    def __call__(self, event: dict[str, Any]) -> bool:
        name = event.get("event", "")
        data = event.get("event_data", {})
        with self._lock:
            self._track(name, data)
            if name in ("runner_on_start", "runner_on_ok", "runner_on_skipped"):
                self._failures = [(host, line) for host, line in self._failures if host != data.get("host")]
            if name == "playbook_on_play_start":
                self._print(f"== {data.get('play', '')}")
            elif name in _OUTCOMES:
                self._task_done(name, data, str(event.get("stdout") or ""))
        return True

    def start(self) -> None:
        """Start the thread that shows the tasks that run long."""
        self._stopped.clear()
        self._thread = threading.Thread(target=self._tick_until_stopped, name="aie-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop that thread (it may be probing Docker) and erase the status line."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=_PROBE_TIMEOUT + 5)
        with self._lock:
            self._running.clear()
            self._erase()

    @property
    def ticking(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def tick(self) -> None:
        """Show the tasks that have run long, when it is time to (the thread calls this twice a
        second, or more often when an interval or the threshold is shorter than 2 s)."""
        with self._lock:
            wanted = self._due(self.clock())
        # Docker is asked outside the lock: events go on being printed meanwhile.
        step = self.build_step() if any(_shows_build_step(host, run.task) for host, run in wanted) else None
        with self._lock:
            now = self.clock()
            due = self._due(now)
            if due and self._terminal:
                self._draw(due, now, step)
            elif due:
                self._log(due, now, step)

    def _tick_until_stopped(self) -> None:
        interval = self.timing.terminal_interval if self._terminal else self.timing.log_interval
        poll = max(0.01, min(0.5, self.timing.threshold / 4, interval / 4))
        while not self._stopped.wait(poll):
            try:
                self.tick()
            except (OSError, ValueError):  # the output was closed: nothing more to show
                return

    def _track(self, name: str, data: dict[str, Any]) -> None:
        """Note which task each host runs, and since when."""
        host = str(data.get("host", "?"))
        if name == "runner_on_start":
            now = self.clock()
            self._running[host] = _Running(str(data.get("task", "")), now, now + self.timing.threshold)
        elif name in _TASK_ENDS:
            self._running.pop(host, None)
            # The status line would name a task that is over.
            if any(shown == host for shown, _ in self._shown):
                self._erase()
        elif name in ("playbook_on_play_start", "playbook_on_stats"):
            # The tasks of the play before are over, whatever events were missed.
            self._running.clear()

    def _due(self, now: float) -> list[tuple[str, _Running]]:
        """The running tasks to show now: on a terminal, all those that have run long, when the
        status line is erased, shows others or is an interval old; in a log, those whose next
        line is due."""
        long = sorted(
            ((host, run) for host, run in self._running.items() if now - run.since >= self.timing.threshold),
            key=lambda item: item[0],
        )
        if not self._terminal:
            return [(host, run) for host, run in long if run.next_line <= now]
        if long and (
            tuple((host, run.task) for host, run in long) != self._shown
            or now - self._drawn_at >= self.timing.terminal_interval
        ):
            return long
        return []

    def _draw(self, due: list[tuple[str, _Running]], now: float, step: str | None) -> None:
        """Redraw the status line in place: the task that has run longest, its hosts, and the
        build step it runs."""
        line = _status_line(due, now, step)
        self.out.write(_ERASE + line[: _width(self.out) - 1])
        self.out.flush()
        self._shown = tuple((host, run.task) for host, run in due)
        self._drawn_at = now

    def _log(self, due: list[tuple[str, _Running]], now: float, step: str | None) -> None:
        """A line per task and host, like `  running  localhost        Build the image aie/ml:latest
        (2m30s)`, then the next one an interval later."""
        for host, run in due:
            line = f"  {'running':<8} {host:<16} {run.task} ({_duration(now - run.since)})"
            self._print(line + (f": {step}" if step and _shows_build_step(host, run.task) else ""))
            while run.next_line <= now:
                run.next_line += self.timing.log_interval

    def _erase(self) -> None:
        if self._shown:
            self.out.write(_ERASE)
            self.out.flush()
            self._shown = ()

    def _task_done(self, name: str, data: dict[str, Any], stdout: str = "") -> None:
        res = data.get("res") or {}
        host = data.get("host", "?")
        task = data.get("task", "")
        if name == "runner_on_ok":
            report = res.get("ansible_facts", {}).get("aie_report")
            if report is not None:
                self.facts.setdefault(host, {}).update(report)
            # A no_log task's result is censored whole, `changed` included: Ansible's own line
            # (the event's stdout, "changed: [host]") still says it.
            hidden_change = "censored" in res and _ANSI.sub("", stdout).lstrip().startswith("changed:")
            changed = res.get("changed") or hidden_change
            word = "changed" if changed else "ok"
            if self.verbose or word == "changed":
                self._print(f"  {word:<8} {host:<16} {task}")
            return
        if name == "runner_on_failed" and data.get("ignore_errors"):
            return
        message = _message(res)
        self._failures.append((host,
            f"host {host} is unreachable: {message}"
            if name == "runner_on_unreachable"
            else f"task '{task}' failed on {host}: {message}"
        ))
        self._print(f"  {_OUTCOMES[name]:<8} {host:<16} {task}: {message}")

    def _print(self, line: str) -> None:
        """Print a line, the status line erased first (the caller holds the lock)."""
        self._erase()
        print(line, file=self.out, flush=True)


def _status_line(due: list[tuple[str, _Running]], now: float, step: str | None) -> str:
    """`  ... 1m05s  Build the image aie/ml:latest  on localhost  (RUN pip install ...)`: the task
    that has run longest, how long, its hosts, how many other tasks run long, and the build step
    of the task (when step is known)."""
    first = min(due, key=lambda item: item[1].since)[1]
    hosts = sorted(host for host, run in due if run.task == first.task)
    others = len({run.task for _, run in due} - {first.task})
    line = f"  ... {_duration(now - first.since)}  {first.task}  on {', '.join(hosts[:3])}"
    if len(hosts) > 3:
        line += f" +{len(hosts) - 3} more"
    if others:
        line += f"  (+{others} other task{'s' if others > 1 else ''})"
    if step and any(_shows_build_step(host, first.task) for host in hosts):
        line += f"  ({step})"
    return line


def _shows_build_step(host: str, task: str) -> bool:
    """Whether the task builds an image on this machine's Docker engine."""
    return host in _LOCAL_HOSTS and task.startswith(_BUILD_TASK)


def _duration(seconds: float) -> str:
    """A duration as 42s, 1m05s or 1h02m."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (OSError, ValueError):
        return False


def _width(out: TextIO) -> int:
    """The terminal's width in characters (80 when it does not say)."""
    try:
        return os.get_terminal_size(out.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


def docker_build_step(timeout: float = _PROBE_TIMEOUT) -> str | None:
    """The step an image build runs on this machine's Docker engine, as `RUN <command>` cut to
    about 60 characters, or None when no build runs or docker is missing or does not answer
    within `timeout` seconds."""
    listed = _docker("ps", "--no-trunc", "--format", "{{.Command}}\t{{.Image}}\t{{.RunningFor}}", timeout=timeout)
    return _build_step(listed) if listed is not None else None


def _docker(*args: str, timeout: float, environ: Mapping[str, str] | None = None) -> str | None:
    """What the docker CLI prints for `args`, or None when there is no docker CLI, or it fails or
    does not answer within `timeout` seconds."""
    environ = os.environ if environ is None else environ
    docker = shutil.which("docker", path=environ.get("PATH"))
    if docker is None:
        return None
    try:
        done = subprocess.run([docker, *args], capture_output=True, text=True, timeout=timeout, check=False,
                              env=dict(environ))
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _build_step(listing: str) -> str | None:
    """The step in `docker ps` lines (command, image, running for; the newest first): the legacy
    builder runs each RUN step in a container of the image built so far, named by its ID."""
    for line in listing.splitlines():
        command, _, rest = line.partition("\t")
        if _IMAGE_ID.fullmatch(rest.partition("\t")[0]):
            step = "RUN " + _step_command(command)
            return step if len(step) <= _STEP_WIDTH else step[: _STEP_WIDTH - 3] + "..."
    return None


def _step_command(quoted: str) -> str:
    """The shell command of a step as `docker ps` quotes it ("/bin/sh -c 'pip install ...'"),
    on one line."""
    try:
        text = json.loads(quoted)
    except ValueError:
        text = quoted.strip('"')
    text = str(text)
    try:
        words = shlex.split(text)
    except ValueError:
        words = []
    # The shell form: [SHELL..., "-c", command].
    if len(words) >= 3 and words[-2] == "-c":
        text = words[-1]
    return " ".join("".join(char if char.isprintable() else " " for char in text).split())


_GENERIC_MESSAGES = ("Unknown error.", "non-zero return code")


def _message(res: dict[str, Any]) -> str:
    """The most telling one-line message of a failed result."""
    if res.get("censored"):
        return "details hidden because the task handles secrets (no_log)"
    # A loop's own message ("One or more items failed") says less than its failed item's.
    results = res.get("results")
    if isinstance(results, list):
        for item in results:
            if isinstance(item, dict) and item.get("failed"):
                return _message(item)
    # ansible-core says only "Unknown error." of a result that failed without a message of its
    # own (a failed_when, or a changed_when that could not be evaluated), and the command module
    # "non-zero return code": what the command wrote to stderr, or why the condition broke, says more.
    keys = ["msg", "stderr", "module_stderr", "reason"]
    if str(res.get("msg", "")).endswith(_GENERIC_MESSAGES):
        keys = ["stderr", "module_stderr", "changed_when_result", "failed_when_result", "msg"]
    for key in keys:
        value = res.get(key)
        if value and isinstance(value, str):
            return " ".join(value.split())
    return "no message"


def docker_context_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """DOCKER_HOST for the run: the engine the docker CLI's current context names, unless
    DOCKER_HOST is set already. The Docker modules of a local inventory read DOCKER_HOST, else
    /var/run/docker.sock, and know nothing of contexts; Docker Desktop's CLI talks to
    ~/.docker/run/docker.sock, and /var/run/docker.sock exists only while Docker Desktop's
    "Allow the default Docker socket to be used" is on. Hosts reached over SSH are not affected:
    the controller's environment does not reach their modules. Empty when no docker CLI answers."""
    environ = os.environ if environ is None else environ
    if environ.get("DOCKER_HOST"):
        return {}
    host = (_docker("context", "inspect", "--format", "{{.Endpoints.docker.Host}}", timeout=10, environ=environ)
            or "").strip()
    return {"DOCKER_HOST": host} if host else {}


def run_playbook(
    playbook: str,
    *,
    project_dir: Path,
    inventory: Path,
    extra_args: Sequence[str] = (),
    limit: str | None = None,
    verbose: bool = False,
    out: TextIO = sys.stdout,
    cancel: threading.Event | None = None,
    timing: ProgressTiming | None = None,
) -> PlaybookResult:
    """Run `playbook` (relative to project_dir) and return how it went. The tasks that run long
    are shown as `timing` says (default: ProgressTiming.from_environment())."""
    progress = _Progress(out, verbose, timing or ProgressTiming.from_environment())
    private_dir = Path(tempfile.mkdtemp(prefix="aie-runner-"))
    cancel_callback: Callable[[], bool] = (
        (lambda: cancel.is_set()) if cancel else (lambda: False)
    )
    # ansible-playbook is installed beside the Python running aie, which need not be on
    # PATH: the run's own environment puts it first (ansible-runner looks the command up
    # there), leaving this process's environment alone.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    try:
        progress.start()
        runner = ansible_runner.run(
            private_data_dir=str(private_dir),
            project_dir=str(project_dir),
            playbook=playbook,
            inventory=str(inventory.resolve()),
            limit=limit,
            cmdline=shlex.join(extra_args) if extra_args else None,
            event_handler=progress,
            cancel_callback=cancel_callback,
            quiet=True,
            # Keep extra vars and environment (which may hold secrets) off the disk.
            suppress_env_files=True,
            envvars={
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_CONFIG": str(project_dir / "ansible.cfg"),
                "PATH": path,
                **docker_context_env(),
            },
        )
        stats = runner.stats or {}
        changed = sum((stats.get("changed") or {}).values())
        result = PlaybookResult(
            rc=int(runner.rc if runner.rc is not None else 1),
            status=str(runner.status),
            changed=changed,
            failures=progress.failures,
            facts=progress.facts,
        )
        if not result.ok and not result.failures:
            result.failures.append(_startup_error(runner))
        return result
    finally:
        progress.stop()
        shutil.rmtree(private_dir, ignore_errors=True)


def _startup_error(runner: Any) -> str:
    """Why ansible-playbook stopped before any task (bad inventory, syntax error...)."""
    text = ""
    try:
        text = runner.stdout.read()
    except (OSError, ValueError):
        pass
    errors = [line.strip() for line in text.splitlines() if "ERROR" in line]
    if errors:
        return errors[0]
    last = [line.strip() for line in text.splitlines() if line.strip()]
    return last[-1] if last else f"ansible-playbook ended with status {runner.status}"
