#!/usr/bin/env python3
"""aie-backup: back up, list and restore this host's data volumes with restic.

Runs inside the backup container. Its settings come from /etc/aie/backup.json (written by
the backup role); the volumes are mounted at /volumes/<name>.

    aie-backup init                    create the repository unless it exists
    aie-backup backup                  one consistent snapshot of every volume, then
                                       retention (forget --prune, unless the repository is
                                       on a backup host) and `restic check`
    aie-backup prune                   on the backup host: retention for every host's
                                       snapshots, then `restic check`
    aie-backup prune-on-schedule       on the backup host: prune at each firing of the
                                       config's schedule, for ever (the REST server's user
                                       runs it: cron would need root)
    aie-backup catch-up                back up now when the schedule fired since this host's
                                       latest snapshot (or, with none, since the repository was
                                       made): a backup missed while the machine slept or was off
    aie-backup snapshots               the snapshots of this deployment, as JSON
    aie-backup resume                  unpause what a killed backup left paused (at start)
    aie-backup status [--schedule S]   this host's latest snapshot, its age, and whether backups
                                       are overdue (none for twice the schedule's interval), as JSON
    aie-backup occupied                the volumes that hold data, as JSON
    aie-backup restore SNAPSHOT [--force]

Consistency: MLflow's SQLite stores (the files named under "databases": the deployment's own,
never files users put on the volumes) are copied with SQLite's online backup API into
/stage/<volume>/ and the live files are left out of the snapshot; PostgreSQL (under
"dumps") dumps its databases into its volume with pg_dump, run in its container, and its live
cluster files are left out (after a restore its entrypoint loads the dumps); containers listed
under "quiesce" (the object store: MinIO's plain files, or the rgw engine's Ceph monitor store
and BlueStore file) are paused while restic reads, so that their volume is taken at one point.
A database that cannot be copied or a dump that fails is reported by name after the snapshot of
everything else was taken (and the command exits 1): one failure does not stop the backup.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONFIG = Path(os.environ.get("AIE_BACKUP_CONFIG", "/etc/aie/backup.json"))
VOLUMES = Path("/volumes")
STAGE = Path("/stage")
SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")
LOCK_WAIT = "10m"
# The tag of the snapshot `restore --force` takes of what it replaces.
SAFETY_TAG = "before-restore"
# The socket of aie-docker-proxy (docker_proxy.py), in its container: the backups' Docker API.
DOCKER_PROXY = "/run/aie-docker/docker.sock"
# Written into the shared repository of earlier releases once its snapshots are in each host's own.
SPLIT_MARK = "aie-split-into-host-repositories"
# The tag of the backup taken before MLflow's databases are migrated or moved (`backup --keep`):
# retention keeps every such snapshot, however old, until someone forgets it by hand.
KEPT_TAG = "before-upgrade"
# Held by every backup, catch-up and restore of this container: cron's, a catch-up's and
# `aie backup`'s runs take turns instead of sharing the stage folder.
LOCK = Path("/run/aie-backup.lock")


class BackupError(Exception):
    """A failure with a message meant for the person running the backup."""


def log(message: str) -> None:
    print(f"aie-backup: {message}", file=sys.stderr, flush=True)


def load_config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(CONFIG.read_text())
    return config


def restic_env(config: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ, RESTIC_REPOSITORY=config["repository"], RESTIC_PASSWORD_FILE=config["password_file"])
    env.setdefault("RESTIC_CACHE_DIR", "/var/cache/restic")
    if "rest_user" in config:
        # This host's account on the backup host's REST server (restic reads these two).
        env["RESTIC_REST_USERNAME"] = config["rest_user"]
        env["RESTIC_REST_PASSWORD"] = Path(config["rest_password_file"]).read_text().strip()
    return env


def restic(config: dict[str, Any], *args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
    # Hosts that share a repository take turns: a backup waits while another host's check or
    # the backup host's pruning holds the lock, instead of failing.
    command = ["restic", *config.get("options", []), "--retry-lock", LOCK_WAIT, *args]
    result = subprocess.run(command, env=restic_env(config), capture_output=capture, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()
        raise BackupError(f"restic {args[0]} failed ({result.returncode}): {' | '.join(detail[-5:])}")
    return result


def restic_summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The summary `restic backup --json` ends with (the snapshot, its counts), or {}."""
    return next((m for m in map(json.loads, result.stdout.splitlines()) if m.get("message_type") == "summary"), {})


def repository_exists(config: dict[str, Any]) -> bool:
    command = ["restic", *config.get("options", []), "cat", "config"]
    result = subprocess.run(command, env=restic_env(config), capture_output=True, text=True, check=False)
    # restic 0.17+ exits with 10 when there is no repository at the location.
    if result.returncode == 0:
        return True
    if result.returncode == 10 or "does not exist" in result.stderr or "unable to open config" in result.stderr:
        return False
    raise BackupError(f"cannot reach the backup repository: {result.stderr.strip().splitlines()[-1:]}")


def init(config: dict[str, Any]) -> None:
    if repository_exists(config):
        print(json.dumps({"created": False}))
        return
    restic(config, "init")
    print(json.dumps({"created": True}))


def is_sqlite(path: Path) -> bool:
    if not path.is_file() or path.is_symlink() or path.name.endswith(SQLITE_SIDE_FILES):
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def databases(config: dict[str, Any]) -> Iterator[Path]:
    """The SQLite databases the deployment names (config "databases": a volume and a path in it)
    that exist: only these are copied as databases. Files that users put on the volumes (an
    artifact may begin with SQLite's header, or be a database) are backed up as any file is."""
    for entry in config.get("databases", []):
        path = VOLUMES / entry["volume"] / entry["path"]
        if is_sqlite(path):
            yield path


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a live database, through SQLite's online backup API."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    with sqlite3.connect(source, timeout=60) as live, sqlite3.connect(target) as copy:
        live.backup(copy)
        (check,) = copy.execute("PRAGMA quick_check").fetchone()
    if check != "ok":
        raise BackupError(f"the copy of {source} fails SQLite's check: {check}")
    info = source.stat()
    os.chown(target, info.st_uid, info.st_gid)
    os.chmod(target, info.st_mode & 0o7777)


def glob_escape(path: Path) -> str:
    return "".join(f"\\{c}" if c in "[]*?\\" else c for c in str(path))


def exclude_line(path: Path) -> str:
    """A line of restic's exclude file that matches path alone. restic reads the file line by
    line, with no way to escape a line break: a name holding one is refused, never split."""
    if "\n" in str(path) or "\r" in str(path):
        raise BackupError(f"cannot leave {str(path)!r} out of the snapshot: its name holds a line break")
    return glob_escape(path)


class DockerAPI:
    """Pause and unpause containers, and run a command in one, through the Docker proxy's socket
    (aie-docker-proxy, which lets only these calls through to Docker).

    Written by hand on purpose: five requests do not justify the Docker SDK (and a
    virtualenv) or the Docker CLI in this image.
    """

    def __init__(self, path: str = DOCKER_PROXY) -> None:
        self.path = path

    def post(self, endpoint: str) -> None:
        status, body = self.request("POST", endpoint)
        if status not in (204, 304):
            raise BackupError(f"Docker refused {endpoint}: {status} {body.decode(errors='replace').strip()}")

    def request(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        # A dump of a large database may take long: its exec returns when it is done.
        connection = http.client.HTTPConnection("localhost", timeout=3600)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        connection.sock = sock
        try:
            payload = json.dumps(body).encode() if body is not None else None
            connection.request(method, endpoint, body=payload, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def exec(self, container: str, command: list[str], user: str) -> tuple[int, str]:
        """Run `command` in `container` as `user`; its exit code and its output (the last 4 KiB)."""
        status, body = self.request(
            "POST", f"/containers/{urllib.parse.quote(container)}/exec",
            {"Cmd": command, "User": user, "AttachStdout": True, "AttachStderr": True},
        )
        if status != 201:
            detail = body.decode(errors="replace").strip()
            raise BackupError(f"Docker refused to run {command[0]} in {container}: {status} {detail}")
        exec_id = json.loads(body)["Id"]
        status, output = self.request("POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": False})
        if status != 200:
            raise BackupError(f"Docker could not start {command[0]} in {container}: {status}")
        _, inspected = self.request("GET", f"/exec/{exec_id}/json")
        # The output is Docker's multiplexed stream: 8-byte frame headers before each chunk.
        text, rest = [], output
        while len(rest) >= 8:
            size = int.from_bytes(rest[4:8], "big")
            text.append(rest[8 : 8 + size].decode(errors="replace"))
            rest = rest[8 + size :]
        return int(json.loads(inspected)["ExitCode"]), "".join(text)[-4096:]

    def pause(self, container: str) -> None:
        self.post(f"/containers/{urllib.parse.quote(container)}/pause")

    def unpause(self, container: str) -> None:
        self.post(f"/containers/{urllib.parse.quote(container)}/unpause")

    def paused(self, container: str) -> bool:
        """Whether the container is paused (False when there is no such container)."""
        status, body = self.request("GET", f"/containers/{urllib.parse.quote(container)}/json")
        if status == 404:
            return False
        if status != 200:
            raise BackupError(f"Docker could not inspect {container}: {status} {body.decode(errors='replace').strip()}")
        return bool(json.loads(body)["State"]["Paused"])


def resume(config: dict[str, Any]) -> None:
    """Unpause the containers a backup pauses (config "quiesce"), when this container starts: a
    backup killed while restic read their volumes (the finally that unpauses them never ran)
    would leave them paused, and S3 answering nothing."""
    docker = DockerAPI()
    for container in config.get("quiesce", []):
        if docker.paused(container):
            docker.unpause(container)
            log(f"resumed {container}, paused by a backup that did not finish")


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """Wait for the other backups and restores of this container, then hold them off."""
    with LOCK.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def snapshot_time(text: str) -> datetime.datetime:
    """restic's time of a snapshot (RFC 3339, with nanoseconds), as an aware datetime."""
    # fromisoformat takes at most microseconds.
    return datetime.datetime.fromisoformat(re.sub(r"([.][0-9]{6})[0-9]+", r"\1", text).replace("Z", "+00:00"))


def last_due(schedule: str, now: datetime.datetime) -> datetime.datetime:
    """When the cron schedule last fired, at or before now (cron's time zone: UTC)."""
    # Debian's python3-croniter in the image (a cron expression parser, not written again here).
    from croniter import croniter

    due: datetime.datetime = croniter(schedule, now).get_prev(datetime.datetime)
    return due


def missed(schedule: str, now: datetime.datetime, since: datetime.datetime | None) -> datetime.datetime | None:
    """The scheduled time that passed without a backup since `since` (None when none did)."""
    due = last_due(schedule, now)
    return due if since is not None and due > since else None


def schedule_interval(schedule: str, now: datetime.datetime) -> float:
    """Seconds between the schedule's last two firings before now (a day for `17 3 * * *`)."""
    from croniter import croniter

    fired = croniter(schedule, now)
    last: datetime.datetime = fired.get_prev(datetime.datetime)
    before: datetime.datetime = fired.get_prev(datetime.datetime)
    return (last - before).total_seconds()


def seconds_to_next(schedule: str, now: datetime.datetime) -> float:
    """Seconds from now to the schedule's next firing (cron's time zone: UTC)."""
    from croniter import croniter

    due: datetime.datetime = croniter(schedule, now).get_next(datetime.datetime)
    return (due - now).total_seconds()


def prune_on_schedule(config: dict[str, Any]) -> None:
    """Prune at each firing of the config's schedule, for ever: a failure is logged, and the
    next firing awaited."""
    while True:
        time.sleep(seconds_to_next(config["schedule"], datetime.datetime.now(datetime.timezone.utc)))
        try:
            prune(config)
        except BackupError as error:
            log(f"error: the scheduled pruning failed: {error}")


def latest_backup(config: dict[str, Any]) -> tuple[dict[str, Any] | None, datetime.datetime | None]:
    """This host's latest snapshot of this deployment (restic's JSON, or None), and when the
    repository was made (None when there is none)."""
    if not repository_exists(config):
        return None, None
    listed = json.loads(restic(config, "snapshots", "--json", "--host", config["host"],
                               "--tag", config["tag"]).stdout or "[]")
    # Its keys' making: the first is the repository's (restic writes the container's local time,
    # UTC here, without a zone).
    keys = json.loads(restic(config, "key", "list", "--json").stdout or "[]")
    made = min((snapshot_time(key["created"].replace(" ", "T") + "Z") for key in keys), default=None)
    backups = [snap for snap in listed if SAFETY_TAG not in snap.get("tags", [])]
    latest = max(backups, key=lambda snap: snapshot_time(snap["time"]), default=None)
    return latest, made


def backup_status(config: dict[str, Any], schedule: str, now: datetime.datetime) -> dict[str, Any]:
    """The latest snapshot of this host, its age, and whether backups are overdue: none for
    more than twice the schedule's interval (since the latest snapshot, or, before the first,
    since the repository was made)."""
    latest, made = latest_backup(config)
    taken = snapshot_time(latest["time"]) if latest else None
    since = taken or made
    interval = schedule_interval(schedule, now)
    return {
        "snapshot": latest["short_id"] if latest else None,
        "time": taken.isoformat() if taken else None,
        "age_seconds": round((now - taken).total_seconds()) if taken else None,
        "schedule": schedule,
        "interval_seconds": interval,
        "overdue": since is not None and (now - since).total_seconds() > 2 * interval,
    }


def catch_up(config: dict[str, Any]) -> None:
    """Back up now when a scheduled backup did not run: cron runs nothing while the machine
    sleeps or the container is stopped, and runs nothing missed when it starts again."""
    now = datetime.datetime.now(datetime.timezone.utc)
    with exclusive():
        latest, made = latest_backup(config)
        taken = snapshot_time(latest["time"]) if latest else None
        since = taken or made
        due = missed(config["schedule"], now, since)
        if due is None:
            log(f"catch-up: no scheduled backup missed (the latest of {config['schedule']!r} "
                f"was {last_due(config['schedule'], now):%Y-%m-%d %H:%M} UTC)")
            return
        what = f"the latest snapshot is of {since:%Y-%m-%d %H:%M}" if taken else "this host has no snapshot yet"
        log(f"catch-up: the backup scheduled for {due:%Y-%m-%d %H:%M} UTC did not run ({what}): backing up now")
        backup_now(config)


def backup(config: dict[str, Any], keep: bool = False) -> None:
    with exclusive():
        backup_now(config, keep)


def backup_now(config: dict[str, Any], keep: bool = False) -> None:
    started = time.monotonic()
    volumes = [VOLUMES / name for name in config["volumes"]]
    missing = [str(v) for v in volumes if not v.is_dir()]
    if missing:
        raise BackupError(f"volumes not mounted: {', '.join(missing)}")
    if not repository_exists(config):
        restic(config, "init")
    shutil.rmtree(STAGE, ignore_errors=True)
    docker = DockerAPI()
    excludes: list[str] = []
    copied: list[str] = []
    # What could not be copied or dumped: reported once the snapshot of the rest is taken.
    failed: list[str] = []
    for volume in volumes:
        (STAGE / volume.name).mkdir(parents=True)
    for database in databases(config):
        staged = STAGE / database.relative_to(VOLUMES)
        try:
            copy_database(database, staged)
        except (sqlite3.Error, OSError, BackupError) as error:
            # No half copy in the snapshot (a restore would put it in place of the database);
            # the live file stays in it as restic reads it: better than nothing.
            staged.unlink(missing_ok=True)
            failed.append(f"{database}: {error}")
            continue
        copied.append(str(database))
        excludes += [exclude_line(database)] + [exclude_line(Path(f"{database}{s}")) for s in SQLITE_SIDE_FILES]
    dumped: list[str] = []
    for dump in config.get("dumps", []):
        code, output = docker.exec(dump["container"], dump["command"], dump["user"])
        volume = VOLUMES / dump["volume"]
        # The cluster's live files are left out either way: a copy of them taken while the
        # server runs is no database; the dump of the last good backup stays on the volume.
        excludes += [exclude_line(volume / live) for live in dump["live"]]
        if code != 0:
            lines = output.strip().splitlines()
            failed.append(f"the dump in {dump['container']} ({code}): {' | '.join(lines[-5:])}")
            continue
        dumped.append(dump["container"])
    exclude_file = Path("/tmp/aie-backup-excludes")
    exclude_file.write_text("".join(f"{line}\n" for line in excludes))
    paused: list[str] = []
    try:
        for container in config.get("quiesce", []):
            docker.pause(container)
            paused.append(container)
        result = restic(
            config, "backup", "--json", "--host", config["host"], "--tag", config["tag"],
            *(["--tag", KEPT_TAG] if keep else []),
            "--exclude-file", str(exclude_file), *map(str, volumes), str(STAGE),
        )
    finally:
        for container in paused:
            docker.unpause(container)
    summary = restic_summary(result)
    if config.get("prune", True):
        forget(config, "--host", config["host"])
    restic(config, "check")
    print(json.dumps({
        "snapshot": summary.get("snapshot_id"),
        "files": summary.get("total_files_processed"),
        "bytes": summary.get("total_bytes_processed"),
        "added_bytes": summary.get("data_added"),
        "databases": copied,
        "dumps": dumped,
        "failed": failed,
        "seconds": round(time.monotonic() - started, 1),
    }))
    if failed:
        raise BackupError(f"snapshot {str(summary.get('snapshot_id'))[:8]} was taken without a consistent copy of "
                          + "; ".join(failed))


def forget(config: dict[str, Any], *selection: str) -> None:
    """Retention: the snapshots of this deployment (tag) beyond the kept ones, per host."""
    keep = config["keep"]
    restic(
        config, "forget", *selection, "--tag", config["tag"], "--group-by", "host,tags",
        "--keep-daily", str(keep["daily"]), "--keep-weekly", str(keep["weekly"]),
        "--keep-monthly", str(keep["monthly"]), "--keep-tag", KEPT_TAG, "--prune",
    )


def host_repositories(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings of each data host's own repository on the backup host (its `repositories`),
    else the one repository of the config."""
    return [{**config, **repository} for repository in config.get("repositories", {}).values()] or [config]


def prune(config: dict[str, Any]) -> None:
    """Retention for every host, where the repositories are (the backup host): the data hosts' own
    accounts may only add snapshots."""
    started = time.monotonic()
    kept = 0
    for repository in host_repositories(config):
        if not repository_exists(repository):
            continue
        forget(repository)
        restic(repository, "check")
        kept += len(json.loads(restic(repository, "snapshots", "--json", "--tag", config["tag"]).stdout or "[]"))
    print(json.dumps({"snapshots": kept, "seconds": round(time.monotonic() - started, 1)}))


def split(config: dict[str, Any]) -> None:
    """On the backup host: copy each data host's snapshots from the shared repository of earlier
    releases (one for every host, one password) into that host's own repository, once (the shared
    one is then marked, and left as it was). restic copies only what the target lacks, so a split
    that was stopped midway is finished by the next."""
    shared = Path(config["repository"])
    done = shared / SPLIT_MARK
    if not (shared / "config").is_file() or done.exists():
        return
    for host, settings in config.get("repositories", {}).items():
        repository = {**config, **settings}
        source = ["--from-repo", config["repository"], "--from-password-file", config["password_file"]]
        if not repository_exists(repository):
            # The shared repository's chunking: what the hosts share deduplicates as before.
            restic(repository, "init", *source, "--copy-chunker-params")
        log(f"split: copying {host}'s snapshots from the shared repository into its own")
        restic(repository, "copy", *source, "--host", host, "--tag", config["tag"])
    done.write_text("Each host's snapshots were copied into the repository named after it.\n")
    log(f"split: every host's snapshots are in its own repository; the shared one is left as it was ({done})")


def snapshots(config: dict[str, Any]) -> None:
    if not repository_exists(config):
        print("[]")
        return
    result = restic(config, "snapshots", "--json", "--tag", config["tag"])
    print(json.dumps(json.loads(result.stdout or "[]")))


def occupied(config: dict[str, Any]) -> list[str]:
    return [name for name in config["volumes"] if any((VOLUMES / name).iterdir())]


def restore(config: dict[str, Any], snapshot: str, force: bool, only: list[str] | None = None) -> None:
    with exclusive():
        restore_now(config, snapshot, force, only)


def restore_now(config: dict[str, Any], snapshot: str, force: bool, only: list[str] | None = None) -> None:
    """The volumes (all of this host's, or those named in `only`) as snapshot `snapshot` holds them;
    volumes that hold data only with `force`, after a snapshot of what they hold."""
    started = time.monotonic()
    unknown = [name for name in only or [] if name not in config["volumes"]]
    if unknown:
        raise BackupError(f"no volume {', '.join(unknown)} on this host (its volumes: {', '.join(config['volumes'])})")
    volumes = [name for name in config["volumes"] if not only or name in only]
    listed = json.loads(restic(config, "snapshots", "--json", snapshot).stdout or "[]")
    if not listed:
        raise BackupError(f"no snapshot {snapshot} in the repository")
    paths = set(listed[0]["paths"])
    absent = [name for name in volumes if str(VOLUMES / name) not in paths]
    if absent:
        raise BackupError(f"snapshot {snapshot} holds no copy of {', '.join(absent)}")
    full = [name for name in occupied(config) if name in volumes]
    if full and not force:
        raise BackupError(f"volumes hold data: {', '.join(full)}; restore with --force to replace it")
    safety = None
    if full:
        # What --force replaces is kept first, as the volumes hold it (their services are
        # stopped): a snapshot of its own, tagged, which restores and status leave aside.
        taken = restic(config, "backup", "--json", "--host", config["host"], "--tag", config["tag"],
                       "--tag", SAFETY_TAG, *(str(VOLUMES / name) for name in full))
        safety = restic_summary(taken).get("snapshot_id")
        log(f"restore: what {', '.join(full)} held is kept as snapshot {str(safety)[:8]} (tag {SAFETY_TAG})")
    for name in full:
        for entry in (VOLUMES / name).iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    shutil.rmtree(STAGE, ignore_errors=True)
    includes: list[str] = []
    for name in volumes:
        includes += ["--include", glob_escape(VOLUMES / name), "--include", glob_escape(STAGE / name)]
    # --sparse: the rgw engine's BlueStore file is mostly holes; written out whole it would fill
    # its full capacity on disk.
    restic(config, "restore", listed[0]["id"], "--target", "/", "--sparse", *includes)
    databases = 0
    for name in volumes:
        staged = STAGE / name
        for copy in (p for p in staged.rglob("*") if p.is_file()):
            target = VOLUMES / name / copy.relative_to(staged)
            for suffix in SQLITE_SIDE_FILES:
                Path(f"{target}{suffix}").unlink(missing_ok=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(copy, target)
            info = copy.stat()
            os.chown(target, info.st_uid, info.st_gid)
            with sqlite3.connect(target) as db:
                (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise BackupError(f"the restored {target} fails SQLite's check: {check}")
            databases += 1
    print(json.dumps({
        "snapshot": listed[0]["id"], "volumes": volumes, "databases": databases, "safety_snapshot": safety,
        "seconds": round(time.monotonic() - started, 1),
    }))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aie-backup", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init")
    backup_parser = commands.add_parser("backup")
    backup_parser.add_argument("--keep", action="store_true",
                               help=f"tag the snapshot {KEPT_TAG}: retention never forgets it")
    commands.add_parser("catch-up")
    commands.add_parser("prune")
    commands.add_parser("prune-on-schedule")
    commands.add_parser("split")
    commands.add_parser("snapshots")
    commands.add_parser("resume")
    status_parser = commands.add_parser("status")
    status_parser.add_argument("--schedule", help="the backup schedule to judge by (default: the config's)")
    commands.add_parser("occupied")
    restore_parser = commands.add_parser("restore")
    restore_parser.add_argument("snapshot")
    restore_parser.add_argument("--force", action="store_true")
    restore_parser.add_argument("--volume", action="append", dest="volumes", help="only this volume (repeatable)")
    args = parser.parse_args(argv)
    config = load_config()
    try:
        if args.command == "init":
            init(config)
        elif args.command == "backup":
            backup(config, args.keep)
        elif args.command == "catch-up":
            catch_up(config)
        elif args.command == "prune":
            prune(config)
        elif args.command == "prune-on-schedule":
            prune_on_schedule(config)
        elif args.command == "split":
            split(config)
        elif args.command == "snapshots":
            snapshots(config)
        elif args.command == "resume":
            resume(config)
        elif args.command == "status":
            now = datetime.datetime.now(datetime.timezone.utc)
            print(json.dumps(backup_status(config, args.schedule or config["schedule"], now)))
        elif args.command == "occupied":
            print(json.dumps(occupied(config)))
        else:
            restore(config, args.snapshot, args.force, args.volumes)
    except BackupError as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
