"""The `aie` command: deploy, inspect and remove the stack."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from aie.runner import PlaybookResult, find_project_dir, run_playbook


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aie", description="Deploy the MLflow experiment-tracking stack with Ansible."
    )
    parser.add_argument("--project-dir", type=Path, help="the aie project folder (default: found from here)")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("-i", "--inventory", type=Path, help="inventory (default: inventory/local)")
        command.add_argument("-l", "--limit", help="only these hosts or groups")
        command.add_argument(
            "-e", "--extra-vars", action="append", default=[], metavar="VARS",
            help="extra variables, as for ansible-playbook (repeatable)",
        )
        command.add_argument("-v", "--verbose", action="store_true", help="print every task, not only changes")
        return command

    up = add("up", "deploy or update the stack")
    up.add_argument("--check", action="store_true", help="only report what would change")
    source = up.add_mutually_exclusive_group()
    source.add_argument("--offline", action="store_true", help="build the base image with debootstrap, never pull")
    source.add_argument("--pull", action="store_true", help="pull the base image, never build it")
    down = add("down", "stop and remove the containers (data volumes are kept)")
    down.add_argument("--purge", action="store_true", help="also delete the data volumes (asks first)")
    down.add_argument("--yes", action="store_true", help="do not ask before --purge")
    add("status", "show each service's health and URL")
    serve = add("serve", "serve a registered model (deploy, or update after the alias moved)")
    serve.add_argument("--model", help="registered model name (default: serving_model_name, conv-net-digits)")
    serve.add_argument("--alias", help="alias of the version to serve (default: serving_model_alias, champion)")
    predict = add("predict", "send a request to the served model and print its answer")
    predict.add_argument(
        "--json", type=Path, metavar="FILE",
        help="request body (MLflow's scoring format, e.g. {\"inputs\": [...]}); default: the model's input example",
    )
    add("backup", "back up every data volume now (all hosts, or --limit)")
    add("snapshots", "list the backups")
    add("s3-check", "read back every S3 object, compare it with its ETag and name the runs of the corrupt ones")
    restore = add("restore", "restore the data volumes from the backups and start the services again")
    restore.add_argument("--snapshot", metavar="ID", help="snapshot to restore (default: each host's latest)")
    restore.add_argument("--force", action="store_true", help="replace volumes that hold data (refused otherwise)")
    return parser


class CommandError(Exception):
    """A reason the command cannot go on, printed as one `aie: error:` line."""


Handler = Callable[[Path, Path, list[str], argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = _parser().parse_args(argv)
    try:
        status = _command(args)
    except CommandError as error:
        status = 1
        message = str(error)
    else:
        message = ""
    # The wall time of every command, then the one error line (always the last line).
    print(f"aie: {args.command} took {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if message:
        print(f"aie: error: {message}", file=sys.stderr)
    return status


def _command(args: argparse.Namespace) -> int:
    try:
        project_dir = find_project_dir(args.project_dir)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None
    inventory = args.inventory or project_dir / "inventory" / "local"
    if not inventory.exists():
        raise CommandError(f"inventory {inventory} does not exist")
    extra: list[str] = []
    for value in args.extra_vars:
        extra += ["-e", value]
    return COMMANDS[args.command](project_dir, inventory, extra, args)


def _up(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    if args.offline or args.pull:
        extra += ["-e", f"base_image_source={'debootstrap' if args.offline else 'pull'}"]
    if args.check:
        extra.append("--check")
    return _deploy("site.yml", project_dir, inventory, extra, args)


def _down(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    if args.purge:
        if not args.yes and not _confirm_purge():
            raise CommandError("not purging: nothing was removed")
        extra += ["-e", "aie_purge=true"]
    return _deploy("playbooks/down.yml", project_dir, inventory, extra, args)


def _serve(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    # The serving role holds the default model and alias: only what the user gave is passed.
    chosen = {"serving_model_name": args.model, "serving_model_alias": args.alias}
    settings = {name: value for name, value in chosen.items() if value is not None}
    extra += ["-e", json.dumps({**settings, "serving_required": True})]
    return _deploy("playbooks/serving.yml", project_dir, inventory, extra, args)


def _run(
    playbook: str, project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace
) -> PlaybookResult:
    """Run a playbook; its result, or CommandError with the reason it failed."""
    cancel = threading.Event()

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        print("aie: interrupted, stopping after the running tasks", file=sys.stderr)
        cancel.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = run_playbook(
            playbook, project_dir=project_dir, inventory=inventory, extra_args=extra,
            # Progress goes to stderr: stdout carries results (status, predictions).
            limit=args.limit, verbose=args.verbose, cancel=cancel, out=sys.stderr,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    if not result.ok:
        raise CommandError(result.failures[0] if result.failures else f"{playbook} failed ({result.status})")
    return result


def _deploy(playbook: str, project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run(playbook, project_dir, inventory, extra, args)
    print(f"aie: {playbook} done, changed={result.changed}")
    return 0


def _status(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run("playbooks/status.yml", project_dir, inventory, extra, args)
    healthy = True
    # Each entry says where aie_services lists the service, and whether it may rightly be down
    # (nothing is served before a model is registered).
    for host, report in sorted(result.facts.items()):
        for service, entry in sorted(report.items(), key=lambda item: int(item[1]["order"])):
            if entry["optional"] and not entry["healthy"]:
                state = "stopped"
            else:
                healthy &= bool(entry["healthy"])
                state = "healthy" if entry["healthy"] else "DOWN"
            print(f"{service:<13} {state:<8} {entry['url']:<36} ({host})")
    token = keys_dir(project_dir) / "secrets" / "jupyterlab_token"
    if token.is_file():
        print(f"JupyterLab token: {token.read_text().split()[0]}")
    return 0 if healthy else 1


def keys_dir(project_dir: Path) -> Path:
    """Where the deployment's keys and secrets are (AIE_KEYS_DIR moves them, as in group_vars)."""
    return Path(os.environ.get("AIE_KEYS_DIR") or project_dir / "files" / "keys")


def _predict(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    if args.json is not None:
        try:
            payload = args.json.read_text()
            json.loads(payload)
        except (OSError, ValueError) as error:
            raise CommandError(f"cannot use {args.json} as a request: {error}") from None
        extra += ["-e", json.dumps({"predict_payload": payload})]
    result = _run("playbooks/predict.yml", project_dir, inventory, extra, args)
    for host, report in sorted(result.facts.items()):
        print(f"# {report['model_uri']} on {host}", file=sys.stderr)
        print(json.dumps(report["answer"]))
    return 0


def _backup(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run("playbooks/backup.yml", project_dir, inventory, extra, args)
    for host, report in sorted(result.facts.items()):
        done = report["backup"]
        print(f"{host}: snapshot {str(done['snapshot'])[:8]}, {done['files']} files, "
              f"{_size(done['bytes'])} read, {_size(done['added_bytes'])} added, {done['seconds']} s")
    return 0


def _snapshots(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run("playbooks/snapshots.yml", project_dir, inventory, extra, args)
    # Hosts that share a repository list the same snapshots.
    found = {snap["id"]: snap for report in result.facts.values() for snap in report["snapshots"]}
    print(f"{'ID':<9} {'TIME (UTC)':<20} {'HOST':<20} {'SIZE':>10}")
    for snap in sorted(found.values(), key=lambda snap: str(snap["time"])):
        size = (snap.get("summary") or {}).get("total_bytes_processed")
        when = str(snap["time"])[:19].replace("T", " ")
        print(f"{snap['short_id']:<9} {when:<20} {snap['hostname']:<20} {_size(size):>10}")
    return 0


def _restore(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    extra += ["-e", json.dumps({"backup_snapshot": args.snapshot or "", "backup_force": args.force})]
    result = _run("playbooks/restore.yml", project_dir, inventory, extra, args)
    for host, report in sorted(result.facts.items()):
        done = report.get("restore")
        if done:
            print(f"{host}: restored {', '.join(done['volumes'])} from snapshot {done['snapshot'][:8]} "
                  f"in {done['seconds']} s")
    print(f"aie: playbooks/restore.yml done, changed={result.changed}")
    return 0


def _s3_check(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run("playbooks/s3_check.yml", project_dir, inventory, extra, args)
    damaged = 0
    for host, report in sorted(result.facts.items()):
        found = report["s3_check"]
        print(f"{host}: {found['objects']} objects ({_size(found['bytes'])}) read back, "
              f"{len(found['corrupt'])} corrupt")
        for entry in found["corrupt"]:
            print(f"  s3://{entry['bucket']}/{entry['key']}: {entry['reason']}")
        for run in found["runs"]:
            print(f"  run with corrupt artifacts: {run}")
        damaged += len(found["corrupt"])
    return 1 if damaged else 0


COMMANDS: dict[str, Handler] = {
    "up": _up,
    "down": _down,
    "status": _status,
    "serve": _serve,
    "predict": _predict,
    "backup": _backup,
    "snapshots": _snapshots,
    "s3-check": _s3_check,
    "restore": _restore,
}


def _size(count: object) -> str:
    if not isinstance(count, int):
        return "-"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _confirm_purge() -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input("Delete the data volumes (MLflow runs, SFTP artifacts, S3 objects)? Type 'purge': ")
    return answer.strip() == "purge"


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
