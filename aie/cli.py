"""The `aie` command: deploy, inspect and remove the stack."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

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
    status = add("status", "show each service's health and URL, each host's latest backup and its certificate")
    status.add_argument("--check", action="store_true",
                        help="print only what needs attention (a service down, a backup overdue, a certificate to "
                             "renew) and exit 1 if anything does: for cron or a monitoring system")
    serve = add("serve", "serve a registered model (deploy, or update after the alias moved)")
    serve.add_argument("--model", help="registered model name (default: serving_model_name, conv-net-digits)")
    serve.add_argument("--alias", help="alias of the version to serve (default: serving_model_alias, champion)")
    predict = add("predict", "send a request to the served model and print its answer")
    predict.add_argument(
        "--json", type=Path, metavar="FILE",
        help="request body (MLflow's scoring format, e.g. {\"inputs\": [...]}); default: the model's input example",
    )
    client = add("client-env", "print what a person exports on their laptop to use MLflow (never a password)")
    client.add_argument("--user", required=True, help="their MLflow account (of mlflow_users)")
    add("move-to-postgresql",
        "move MLflow's runs, models and accounts from SQLite to PostgreSQL (backs up first), then run MLflow there")
    add("backup", "back up every data volume now (all hosts, or --limit)")
    add("snapshots", "list the backups")
    add("s3-check", "read back every S3 object, compare it with its ETag and name the runs of the corrupt ones")
    restore = add("restore", "restore the data volumes from the backups and start the services again")
    restore.add_argument("--snapshot", metavar="ID", help="snapshot to restore (default: each host's latest)")
    restore.add_argument("--force", action="store_true", help="replace volumes that hold data (refused otherwise)")
    restore.add_argument("--volume", action="append", dest="volumes", metavar="NAME", default=[],
                         help="restore only this volume (repeatable), e.g. sftp-data; the others are left as they are")
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
    if args.command not in CHANGING or getattr(args, "check", False):
        return COMMANDS[args.command](project_dir, inventory, extra, args)
    with deployment_lock(keys_dir(project_dir, args.extra_vars), f"aie {args.command}"):
        return COMMANDS[args.command](project_dir, inventory, extra, args)


# The commands that change a deployment: one at a time per deployment (its keys folder names it),
# so that a backup never starts during a restore and two `aie up` never deploy at once.
CHANGING = {"up", "down", "serve", "backup", "restore", "move-to-postgresql"}


@contextlib.contextmanager
def deployment_lock(keys: Path, command: str) -> Iterator[None]:
    """Hold the lock of the deployment whose keys folder is keys, or say who holds it. The lock
    file is under the user's cache folder (~/.cache/aie/locks), named by the keys folder's path;
    the kernel lets it go when the process ends, however it ends."""
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aie" / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.sha256(str(keys.resolve()).encode()).hexdigest()[:16] + ".lock")
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another aie command"
            raise CommandError(f"{holder} is running on this deployment ({keys}): wait until it ends, "
                               f"then run {command} again") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{command} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})")
        handle.flush()
        yield


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
    return _deploy("playbooks/serve.yml", project_dir, inventory, extra, args)


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
    # Notes the playbooks report (aie_report's `notes`), also when the run failed: they may say why.
    for host, report in sorted(result.facts.items()):
        for note in report.get("notes", []):
            print(f"aie: note ({host}): {note}", file=sys.stderr)
    if not result.ok:
        raise CommandError(result.failures[0] if result.failures else f"{playbook} failed ({result.status})")
    return result


def _deploy(playbook: str, project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run(playbook, project_dir, inventory, extra, args)
    print(f"aie: {playbook} done, changed={result.changed}")
    return 0


def _status(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run("playbooks/status.yml", project_dir, inventory, extra, args)
    lines, problems = status_lines(result.facts)
    if args.check:
        for line in problems:
            print(line)
        return 1 if problems else 0
    for line in lines:
        print(line)
    keys = keys_dir(project_dir, args.extra_vars)
    layout = keys_layout(project_dir)
    ca = keys / layout["ca"]
    if ca.is_file():
        print(f"CA of the HTTPS services (trust it in your browser): {ca}")
    token = keys / layout["jupyterlab_token"]
    if token.is_file():
        print(f"JupyterLab token: {token.read_text().split()[0]}")
    # The admin password is never printed: only where it is kept.
    admin = keys / layout["mlflow_admin_password"]
    if admin.is_file():
        print(f"MLflow admin password: in {admin}")
    # Only a service down fails plain `aie status`; --check also counts backups and certificates.
    return 1 if any(" DOWN " in line for line in problems) else 0


def _age(seconds: float) -> str:
    """How long ago, to the unit that matters: 7 min, 5 h, 3 days."""
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"


def status_lines(reports: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What `aie status` prints of each host's report (playbooks/status.yml), and the lines of
    what needs attention: a service down, backups overdue, a certificate within its renewal window."""
    lines: list[str] = []
    problems: list[str] = []
    for host, report in sorted(reports.items()):
        # Each entry says where aie_services lists the service, and whether it may rightly be
        # down (nothing is served before a model is registered).
        for service, entry in sorted(report["services"].items(), key=lambda item: int(item[1]["order"])):
            if entry["optional"] and not entry["healthy"]:
                state = "stopped"
            else:
                state = "healthy" if entry["healthy"] else "DOWN"
            line = f"{service:<13} {state:<8} {entry['url']:<36} ({host})"
            lines.append(line)
            if state == "DOWN":
                problems.append(line)
            if entry.get("metrics"):
                lines.append(f"{'':<22} metrics: {entry['metrics']} (Prometheus, for MLflow accounts)")
        backup = report.get("backup") or {}
        if backup.get("error"):
            line = f"{'backup':<13} {'DOWN':<8} {str(backup['error'])[:160]} ({host})"
            lines.append(line)
            problems.append(line)
        elif backup:
            state = "OVERDUE" if backup["overdue"] else "ok"
            if backup["snapshot"]:
                what = f"snapshot {backup['snapshot']}, {_age(float(backup['age_seconds']))} ago"
            else:
                what = "no snapshot yet"
            line = f"{'backup':<13} {state:<8} {what:<36} ({host}; schedule {backup['schedule']})"
            lines.append(line)
            if backup["overdue"]:
                problems.append(f"{line}: none for more than twice the schedule's interval; `docker logs` of the "
                                "backup container says why")
        certificate = report.get("certificate") or {}
        if certificate:
            expiry = datetime.datetime.strptime(str(certificate["not_after"]), "%Y%m%d%H%M%SZ").replace(
                tzinfo=datetime.timezone.utc)
            days = (expiry - datetime.datetime.now(datetime.timezone.utc)).days
            state = "RENEW" if certificate["renew"] else "ok"
            until = f"valid until {expiry:%Y-%m-%d} ({days} days)"
            line = f"{'certificate':<13} {state:<8} {until:<36} ({host})"
            lines.append(line)
            if certificate["renew"]:
                problems.append(f"{line}: within {certificate['renew_days']} days of its expiry: `aie up` issues "
                                f"aie's own again; renew {certificate['path']} if it is yours")
    return lines, problems


def keys_layout(project_dir: Path) -> dict[str, str]:
    """What the keys folder holds where (aie_keys_layout, plain names in group_vars/all/paths.yml),
    read from the file the playbooks read, so the CLI needs no playbook to find them."""
    paths = yaml.safe_load((project_dir / "group_vars" / "all" / "paths.yml").read_text())
    return {name: str(value) for name, value in paths["aie_keys_layout"].items()}


def keys_dir(project_dir: Path, extra_vars: Sequence[str] = ()) -> Path:
    """Where the deployment's keys and secrets are: aie_keys_dir given with -e, else
    AIE_KEYS_DIR, else the project's (as group_vars/all/paths.yml decides)."""
    given = _extra_vars(extra_vars).get("aie_keys_dir")
    return Path(str(given or os.environ.get("AIE_KEYS_DIR") or project_dir / keys_layout(project_dir)["default"]))


def _extra_vars(values: Sequence[str]) -> dict[str, Any]:
    """The -e values merged as ansible-playbook reads them (@file, YAML/JSON, key=value).

    Ansible's own reader (ansible.utils.vars.load_extra_vars) takes them from its global CLI
    context, which only an ansible command sets up; its parsers are used here instead."""
    from ansible.parsing.splitter import parse_kv  # noqa: PLC0415 - only commands that read -e need it

    merged: dict[str, Any] = {}
    for value in values:
        if value.startswith("@"):
            try:
                loaded = yaml.safe_load(Path(value[1:]).read_text())
            except (OSError, yaml.YAMLError) as error:
                raise CommandError(f"cannot read the variables in {value[1:]}: {error}") from None
        elif value.lstrip().startswith(("{", "[")):
            loaded = yaml.safe_load(value)
        else:
            loaded = parse_kv(value)
        if isinstance(loaded, dict):
            merged.update(loaded)
    return merged


def _predict(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    # HTTP straight to the served model: the serving role recorded its URL and input example
    # (aie_serving_record), so no playbook runs here.
    payload = None
    if args.json is not None:
        try:
            payload = args.json.read_text()
            json.loads(payload)
        except (OSError, ValueError) as error:
            raise CommandError(f"cannot use {args.json} as a request: {error}") from None
    folder = keys_dir(project_dir, args.extra_vars) / keys_layout(project_dir)["serving"]
    records = sorted(folder.glob("*.json"))
    if args.limit:
        records = [path for path in records if path.stem in args.limit.split(",")]
    if not records:
        raise CommandError(f"no served model is recorded in {folder}{' for ' + args.limit if args.limit else ''}: "
                           "run aie serve")
    for path in records:
        record = json.loads(path.read_text())
        body = payload if payload is not None else json.dumps(record["example"])
        print(f"# {record['model_uri']} ({record['served_as']}) on {path.stem}", file=sys.stderr)
        print(json.dumps(_invoke(record["url"], body, record.get("ca_bundle"))))
    return 0


def _invoke(url: str, body: str, ca_bundle: str | None = None) -> object:
    """POST one request to a model server's /invocations, its certificate checked against
    ca_bundle (the deployment's CA) when given; its JSON answer."""
    request = urllib.request.Request(f"{url}/invocations", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    tls = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
    try:
        with urllib.request.urlopen(request, timeout=60, context=tls) as response:  # noqa: S310 - the recorded URL
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except (ValueError, AttributeError):
            pass
        raise CommandError(f"the model at {url} answered {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CommandError(f"no model answers at {url} ({reason}): run aie serve (aie status shows what runs)") \
            from None


# What a laptop's MLflow client is told (aie client-env): files at least this large go to S3
# experiments in parts, each sent straight to S3 on a URL the MLflow server signs (the client
# holds no S3 key); smaller ones, and every file of an SFTP experiment, go through the server.
MULTIPART_MINIMUM = 32 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024


def _client_env(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    # From what the mlflow role recorded (aie_client_record), so no playbook runs here.
    keys = keys_dir(project_dir, args.extra_vars)
    layout = keys_layout(project_dir)
    path = keys / layout["client"]
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise CommandError(f"no deployment is recorded in {path}: run aie up first") from None
    if args.user not in record["users"]:
        known = ", ".join(record["users"]) or "none"
        raise CommandError(f"{args.user} has no MLflow account here (mlflow_users: {known}): add them to "
                           "mlflow_users and run aie up")
    for line in client_env_lines(record, args.user, ca_with_public_cas(Path(record["ca"]), keys / layout["tls"])):
        print(line)
    return 0


def ca_with_public_cas(ca: Path, folder: Path) -> Path:
    """A CA bundle of the deployment's CA and the public ones (certifi's): for the HTTPS requests of
    a client that go to S3, which MLflow's client checks against REQUESTS_CA_BUNDLE, a variable that
    other programs in the same shell (pip) read too."""
    import certifi

    bundle = folder / "ca-with-public.pem"
    content = Path(certifi.where()).read_text() + "\n" + ca.read_text()
    if not bundle.is_file() or bundle.read_text() != content:
        bundle.write_text(content)
    return bundle


def client_env_lines(record: dict[str, Any], user: str, bundle: Path) -> list[str]:
    """The shell lines of `aie client-env`: eval-able exports, comments for people."""
    import shlex

    exports = {
        "MLFLOW_TRACKING_URI": record["tracking_uri"],
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_SERVER_CERT_PATH": record["ca"],
        "REQUESTS_CA_BUNDLE": str(bundle),
        "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
        "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(MULTIPART_MINIMUM),
        "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": str(MULTIPART_CHUNK),
    }
    return [
        f"# MLflow at {record['tracking_uri']} as {user}: eval \"$(aie client-env --user {user})\"",
        "# On another machine, copy the two CA files named below and change their paths.",
        *(f"export {name}={shlex.quote(value)}" for name, value in exports.items()),
        f"# The password is never printed: {user}'s own, or the one generated in "
        f"{record['generated_passwords']}/{user} on this machine. Then:",
        "#   read -rs MLFLOW_TRACKING_PASSWORD && export MLFLOW_TRACKING_PASSWORD",
    ]


def _move(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    # The whole deployment with PostgreSQL chosen: the database host is deployed, then the mlflow
    # role backs up the SQLite files and copies them before MLflow starts there (roles/mlflow/tasks/schema.yml).
    extra += ["-e", json.dumps({"aie_mlflow_backend": "postgresql", "aie_mlflow_move": True})]
    result = _run("site.yml", project_dir, inventory, extra, args)
    for host, report in sorted(result.facts.items()):
        moved = report.get("moved")
        if not moved:
            continue
        for store, rows in sorted(moved["moved"].items()):
            counted = ", ".join(f"{name} {count}" for name, count in sorted(rows.items()) if count)
            print(f"{host}: moved the {store} database: {counted}")
        print(f"{host}: every table counted and its first rows compared on both sides, in {moved['seconds']} s")
    print("aie: MLflow runs on PostgreSQL now: set aie_mlflow_backend: postgresql in the inventory's group_vars "
          "(the SQLite files stay on MLflow's volume, unused)")
    return 0


def _backup(project_dir: Path, inventory: Path, extra: list[str], args: argparse.Namespace) -> int:
    result = _run("playbooks/backup.yml", project_dir, inventory, extra, args)
    for host, report in sorted(result.facts.items()):
        done = report.get("backup")
        if done:
            print(f"{host}: snapshot {str(done['snapshot'])[:8]}, {done['files']} files, "
                  f"{_size(done['bytes'])} read, {_size(done['added_bytes'])} added, {done['seconds']} s")
        pruned = report.get("prune")
        if pruned:
            print(f"{host}: pruned the repository, {pruned['snapshots']} snapshots kept, {pruned['seconds']} s")
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
    extra += ["-e", json.dumps({"backup_snapshot": args.snapshot or "", "backup_force": args.force,
                                "backup_volumes": args.volumes})]
    result = _run("playbooks/restore.yml", project_dir, inventory, extra, args)
    for host, report in sorted(result.facts.items()):
        done = report.get("restore")
        if done:
            if done.get("safety_snapshot"):
                print(f"{host}: what the volumes held is kept as snapshot {done['safety_snapshot'][:8]} "
                      "(tag before-restore; aie restore --snapshot restores it)")
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
    "client-env": _client_env,
    "move-to-postgresql": _move,
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
