"""The `aie` command: deploy, inspect and remove the stack."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from aie.runner import PlaybookResult, find_project_dir, run_playbook

SERVICE_ORDER = ("mlflow", "sftp", "s3", "jupyterlab", "serving", "backup_server")
# Services that may rightly be down: nothing is served before a model is registered.
OPTIONAL_SERVICES = ("serving",)


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
    serve.add_argument("--model", default="conv-net-digits", help="registered model name (default: %(default)s)")
    serve.add_argument("--alias", default="champion", help="alias of the version to serve (default: %(default)s)")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        project_dir = find_project_dir(args.project_dir)
    except FileNotFoundError as error:
        return _fail(str(error))
    inventory = args.inventory or project_dir / "inventory" / "local"
    if not inventory.exists():
        return _fail(f"inventory {inventory} does not exist")
    extra: list[str] = []
    for value in args.extra_vars:
        extra += ["-e", value]

    if args.command == "up":
        if args.offline or args.pull:
            extra += ["-e", f"base_image_source={'debootstrap' if args.offline else 'pull'}"]
        if args.check:
            extra.append("--check")
        return _deploy("site.yml", project_dir, inventory, extra, args)
    if args.command == "down":
        if args.purge:
            if not args.yes and not _confirm_purge():
                return _fail("not purging: nothing was removed")
            extra += ["-e", "aie_purge=true"]
        return _deploy("playbooks/down.yml", project_dir, inventory, extra, args)
    if args.command == "serve":
        extra += ["-e", json.dumps({"serving_model_name": args.model, "serving_model_alias": args.alias,
                                    "serving_required": True})]
        return _deploy("playbooks/serving.yml", project_dir, inventory, extra, args)
    if args.command == "predict":
        return _predict(project_dir, inventory, extra, args)
    if args.command == "backup":
        return _backup(project_dir, inventory, extra, args)
    if args.command == "snapshots":
        return _snapshots(project_dir, inventory, extra, args)
    if args.command == "restore":
        extra += ["-e", json.dumps({"backup_snapshot": args.snapshot or "", "backup_force": args.force})]
        return _restore(project_dir, inventory, extra, args)
    if args.command == "s3-check":
        return _s3_check(project_dir, inventory, extra, args)
    return _status(project_dir, inventory, extra, args)


def _run(
    playbook: str, project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace
) -> PlaybookResult:
    cancel = threading.Event()

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        print("aie: interrupted, stopping after the running tasks", file=sys.stderr)
        cancel.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        return run_playbook(
            playbook, project_dir=project_dir, inventory=inventory, extra_args=extra,
            # Progress goes to stderr: stdout carries results (status, predictions).
            limit=args.limit, verbose=args.verbose, cancel=cancel, out=sys.stderr,
        )
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_ok(
    playbook: str, project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace
) -> PlaybookResult | None:
    """Run a playbook; its result, or None once the reason it failed is printed."""
    result = _run(playbook, project_dir, inventory, extra, args)
    if result.ok:
        return result
    _fail(result.failures[0] if result.failures else f"{playbook} failed ({result.status})")
    return None


def _deploy(playbook: str, project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run_ok(playbook, project_dir, inventory, extra, args)
    if result is None:
        return 1
    print(f"aie: {playbook} done, changed={result.changed}")
    return 0


def _status(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run_ok("playbooks/status.yml", project_dir, inventory, extra, args)
    if result is None:
        return 1
    healthy = True
    for host, report in sorted(result.facts.items()):
        for service in SERVICE_ORDER:
            if service in report:
                entry = report[service]
                if service in OPTIONAL_SERVICES and not entry["healthy"]:
                    state = "stopped"
                else:
                    healthy &= bool(entry["healthy"])
                    state = "healthy" if entry["healthy"] else "DOWN"
                print(f"{service:<13} {state:<8} {entry['url']:<36} ({host})")
    token = project_dir / "files" / "keys" / "secrets" / "jupyterlab_token"
    if token.is_file():
        print(f"JupyterLab token: {token.read_text().split()[0]}")
    return 0 if healthy else 1


def _predict(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    if args.json is not None:
        try:
            payload = args.json.read_text()
            json.loads(payload)
        except (OSError, ValueError) as error:
            return _fail(f"cannot use {args.json} as a request: {error}")
        extra += ["-e", json.dumps({"predict_payload": payload})]
    result = _run_ok("playbooks/predict.yml", project_dir, inventory, extra, args)
    if result is None:
        return 1
    for host, report in sorted(result.facts.items()):
        print(f"# {report['model_uri']} on {host}", file=sys.stderr)
        print(json.dumps(report["answer"]))
    return 0


def _backup(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run_ok("playbooks/backup.yml", project_dir, inventory, extra, args)
    if result is None:
        return 1
    for host, report in sorted(result.facts.items()):
        done = report["backup"]
        print(f"{host}: snapshot {str(done['snapshot'])[:8]}, {done['files']} files, "
              f"{_size(done['bytes'])} read, {_size(done['added_bytes'])} added, {done['seconds']} s")
    return 0


def _snapshots(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run_ok("playbooks/snapshots.yml", project_dir, inventory, extra, args)
    if result is None:
        return 1
    # Hosts that share a repository list the same snapshots.
    found = {snap["id"]: snap for report in result.facts.values() for snap in report["snapshots"]}
    print(f"{'ID':<9} {'TIME (UTC)':<20} {'HOST':<20} {'SIZE':>10}")
    for snap in sorted(found.values(), key=lambda snap: str(snap["time"])):
        size = (snap.get("summary") or {}).get("total_bytes_processed")
        when = str(snap["time"])[:19].replace("T", " ")
        print(f"{snap['short_id']:<9} {when:<20} {snap['hostname']:<20} {_size(size):>10}")
    return 0


def _restore(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run_ok("playbooks/restore.yml", project_dir, inventory, extra, args)
    if result is None:
        return 1
    for host, report in sorted(result.facts.items()):
        done = report.get("restore")
        if done:
            print(f"{host}: restored {', '.join(done['volumes'])} from snapshot {done['snapshot'][:8]} "
                  f"in {done['seconds']} s")
    print(f"aie: playbooks/restore.yml done, changed={result.changed}")
    return 0


def _s3_check(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run_ok("playbooks/s3_check.yml", project_dir, inventory, extra, args)
    if result is None:
        return 1
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


def _fail(message: str) -> int:
    print(f"aie: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
