"""Run the project's playbooks through ansible-runner with concise progress and clear errors."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
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
    """Turns runner events into one line per task and host, and remembers failures."""

    def __init__(self, out: TextIO, verbose: bool) -> None:
        self.out = out
        self.verbose = verbose
        # (host, line) of each failure: a host that goes on with another task had it rescued
        # (block/rescue), and it is forgotten; the ones left stopped the run.
        self._failures: list[tuple[str, str]] = []
        self.facts: dict[str, Any] = {}

    @property
    def failures(self) -> list[str]:
        return [line for _, line in self._failures]

    def __call__(self, event: dict[str, Any]) -> bool:
        name = event.get("event", "")
        data = event.get("event_data", {})
        if name in ("runner_on_start", "runner_on_ok", "runner_on_skipped"):
            self._failures = [(host, line) for host, line in self._failures if host != data.get("host")]
        if name == "playbook_on_play_start":
            self._print(f"== {data.get('play', '')}")
        elif name in _OUTCOMES:
            self._task_done(name, data)
        return True

    def _task_done(self, name: str, data: dict[str, Any]) -> None:
        res = data.get("res") or {}
        host = data.get("host", "?")
        task = data.get("task", "")
        if name == "runner_on_ok":
            report = res.get("ansible_facts", {}).get("aie_report")
            if report is not None:
                self.facts.setdefault(host, {}).update(report)
            word = "changed" if res.get("changed") else "ok"
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
        print(line, file=self.out, flush=True)


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
) -> PlaybookResult:
    """Run `playbook` (relative to project_dir) and return how it went."""
    progress = _Progress(out, verbose)
    private_dir = Path(tempfile.mkdtemp(prefix="aie-runner-"))
    cancel_callback: Callable[[], bool] = (
        (lambda: cancel.is_set()) if cancel else (lambda: False)
    )
    # ansible-playbook is installed beside the Python running aie, which need not be on
    # PATH: the run's own environment puts it first (ansible-runner looks the command up
    # there), leaving this process's environment alone.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    try:
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
