"""aie-backup's own logic (roles/backup/docker/aie_backup.py), without restic or Docker.

The end-to-end restore drill and the multihost scenario run it for real in its container;
these tests pin down what they cannot see: consistent copies of live SQLite databases, which
files are copied as databases, escaping for restic's exclude list and the refusals.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from pathlib import Path
from types import ModuleType

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return load_script("roles/backup/docker/aie_backup.py")


def test_a_live_database_is_copied_whole_and_consistent(tool: ModuleType, tmp_path: Path) -> None:
    live = tmp_path / "mlflow.db"
    writer = sqlite3.connect(live)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE metrics (step INTEGER, value REAL)")
    writer.executemany("INSERT INTO metrics VALUES (?, ?)", [(i, i / 3) for i in range(5000)])
    writer.commit()
    # Committed rows still in the write-ahead log, a transaction left open: a file copy would miss
    # the first and could catch the second half-done.
    assert (tmp_path / "mlflow.db-wal").stat().st_size > 0
    writer.execute("INSERT INTO metrics VALUES (-1, -1)")
    live.chmod(0o640)
    copy = tmp_path / "stage" / "mlflow.db"
    tool.copy_database(live, copy)
    writer.rollback()
    writer.close()
    with sqlite3.connect(copy) as db:
        assert db.execute("SELECT count(*), min(step), max(step) FROM metrics").fetchone() == (5000, 0, 4999)
    assert copy.stat().st_mode & 0o777 == 0o640


def test_only_the_databases_the_deployment_names_are_copied_as_databases(
    tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = tmp_path / "mlflow-data"
    (volume / "runs" / "1").mkdir(parents=True)
    with sqlite3.connect(volume / "mlflow.db") as db:
        db.execute("CREATE TABLE t (x)")
    # What users may put on a volume: a database of their own, a file that begins with SQLite's
    # header and is none, a database whose name holds exclude patterns, a link to a database.
    with sqlite3.connect(volume / "runs" / "1" / "auth.db") as db:
        db.execute("CREATE TABLE t (x)")
    (volume / "broken.db").write_bytes(b"SQLite format 3\x00 and then other bytes")
    with sqlite3.connect(volume / "x\nvolumes\nstage") as db:
        db.execute("CREATE TABLE t (x)")
    (volume / "link.db").symlink_to(volume / "mlflow.db")
    (volume / "mlflow.db-wal").write_bytes(b"SQLite format 3\x00 but a side file")
    monkeypatch.setattr(tool, "VOLUMES", tmp_path)
    named = [{"volume": "mlflow-data", "path": path} for path in ("mlflow.db", "basic_auth.db", "link.db")]
    # basic_auth.db does not exist (yet); link.db is named but a link: neither is copied.
    assert list(tool.databases({"databases": named})) == [volume / "mlflow.db"]
    assert list(tool.databases({})) == []


def test_glob_characters_are_escaped_for_restic(tool: ModuleType) -> None:
    assert tool.glob_escape(Path("/volumes/a[1]/b*?.db")) == "/volumes/a\\[1\\]/b\\*\\?.db"
    assert tool.glob_escape(Path("/volumes/plain/mlflow.db")) == "/volumes/plain/mlflow.db"
    assert tool.exclude_line(Path("/volumes/a[1]/mlflow.db")) == "/volumes/a\\[1\\]/mlflow.db"


@pytest.mark.parametrize("name", ["x\nvolumes\nstage", "x\rvolumes"])
def test_a_line_break_never_reaches_restics_exclude_file(tool: ModuleType, name: str) -> None:
    # restic reads its exclude file line by line: the name would become patterns of their own.
    with pytest.raises(tool.BackupError, match="its name holds a line break"):
        tool.exclude_line(Path("/volumes/mlflow-data") / name)


def test_occupied_lists_the_volumes_that_hold_data(
    tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("aie-mlflow-data", "aie-sftp-data"):
        (tmp_path / name).mkdir()
    (tmp_path / "aie-sftp-data" / "artifact.bin").write_bytes(b"x")
    monkeypatch.setattr(tool, "VOLUMES", tmp_path)
    assert tool.occupied({"volumes": ["aie-mlflow-data", "aie-sftp-data"]}) == ["aie-sftp-data"]


def test_a_backup_of_volumes_not_mounted_names_them_and_fails(
    tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "backup.json"
    config.write_text(json.dumps({"volumes": ["aie-mlflow-data"], "repository": str(tmp_path / "repo"),
                                  "password_file": str(tmp_path / "password")}))
    monkeypatch.setattr(tool, "CONFIG", config)
    monkeypatch.setattr(tool, "VOLUMES", tmp_path / "volumes")
    assert tool.main(["backup"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"aie-backup: error: volumes not mounted: {tmp_path / 'volumes' / 'aie-mlflow-data'}")


def test_restics_snapshot_times_are_read_to_the_microsecond(tool: ModuleType) -> None:
    utc = datetime.timezone.utc
    assert tool.snapshot_time("2026-12-06T03:17:05.123456789Z") == datetime.datetime(2026, 12, 6, 3, 17, 5, 123456,
                                                                                     tzinfo=utc)
    assert tool.snapshot_time("2026-12-06T04:17:05.5+01:00") == datetime.datetime(2026, 12, 6, 3, 17, 5, 500000,
                                                                                  tzinfo=utc)
    # A key's making, as catch_up gives it (restic's "2026-12-06 02:05:40", UTC in the container).
    assert tool.snapshot_time("2026-12-06T02:05:40Z") == datetime.datetime(2026, 12, 6, 2, 5, 40, tzinfo=utc)


@pytest.mark.parametrize(("now", "since", "due"), [
    # A laptop asleep at 03:17: the backup of that night is due when it wakes at 08:00.
    ("2026-12-06T08:00:00Z", "2026-12-05T03:17:30Z", "2026-12-06T03:17:00+00:00"),
    # Taken at 03:17 as scheduled: nothing due until the next night.
    ("2026-12-06T08:00:00Z", "2026-12-06T03:17:40Z", None),
    ("2026-12-07T03:16:59Z", "2026-12-06T03:17:40Z", None),
    # Before the first snapshot the repository's making counts: one made after 03:17 owes nothing.
    ("2026-12-06T08:00:00Z", "2026-12-06T07:00:00Z", None),
    # Off for three nights: one catch-up backup.
    ("2026-12-09T08:00:00Z", "2026-12-05T03:17:30Z", "2026-12-09T03:17:00+00:00"),
    # Nothing to count from (no repository yet): nothing is due.
    ("2026-12-06T08:00:00Z", None, None),
])
def test_a_backup_is_due_when_the_schedule_fired_since_the_last_one(
    tool: ModuleType, now: str, since: str | None, due: str | None
) -> None:
    found = tool.missed("17 3 * * *", tool.snapshot_time(now), tool.snapshot_time(since) if since else None)
    assert (found.isoformat() if found else None) == due


@pytest.mark.parametrize(("schedule", "seconds"), [("17 3 * * *", 86400), ("* * * * *", 60), ("0 */6 * * *", 21600),
                                                   ("17 3 * * 0", 7 * 86400)])
def test_the_schedules_interval(tool: ModuleType, schedule: str, seconds: float) -> None:
    assert tool.schedule_interval(schedule, tool.snapshot_time("2026-12-06T08:00:00Z")) == seconds


@pytest.mark.parametrize(("schedule", "now", "seconds"), [
    # The backup server's pruning (prune-on-schedule) waits for the schedule's next firing.
    ("30 4 * * *", "2026-12-06T04:00:00Z", 1800), ("30 4 * * *", "2026-12-06T04:30:00Z", 86400),
    ("0 */6 * * *", "2026-12-06T05:59:30Z", 30)])
def test_the_pruning_waits_for_the_next_firing(tool: ModuleType, schedule: str, now: str, seconds: float) -> None:
    assert tool.seconds_to_next(schedule, tool.snapshot_time(now)) == seconds


@pytest.mark.parametrize(("latest", "made", "overdue"), [
    # Last night's backup, and the one before: fine until two nights pass without one.
    ("2026-12-06T03:17:30Z", "2026-11-01T10:00:00Z", False),
    ("2026-12-04T08:00:01Z", "2026-11-01T10:00:00Z", False),
    ("2026-12-04T07:59:59Z", "2026-11-01T10:00:00Z", True),
    # No snapshot yet: counted from the repository's making.
    (None, "2026-12-05T10:00:00Z", False),
    (None, "2026-12-01T10:00:00Z", True),
    # No repository: nothing to judge.
    (None, None, False),
])
def test_backups_are_overdue_after_twice_the_schedules_interval(
    tool: ModuleType, monkeypatch: pytest.MonkeyPatch, latest: str | None, made: str | None, overdue: bool
) -> None:
    # What restic would list (latest_backup reads it; the end-to-end tests ask a real repository).
    snapshot = {"short_id": "1a2b3c4d", "time": latest} if latest else None
    monkeypatch.setattr(tool, "latest_backup", lambda config: (snapshot, tool.snapshot_time(made) if made else None))
    now = tool.snapshot_time("2026-12-06T08:00:00Z")
    status = tool.backup_status({}, "17 3 * * *", now)
    assert status["overdue"] is overdue
    assert status["snapshot"] == (snapshot["short_id"] if snapshot else None)
    assert status["age_seconds"] == (round((now - tool.snapshot_time(latest)).total_seconds()) if latest else None)


@pytest.fixture(scope="module")
def proxy() -> ModuleType:
    return load_script("roles/backup/docker/docker_proxy.py")


def test_the_docker_proxy_lets_through_only_the_backups_calls(proxy: ModuleType) -> None:
    # What the deployment gives it on a host with the object store and PostgreSQL.
    dump_rule = {"container": "aie-database", "command": ["aie-database", "dump"], "user": "postgres"}
    rules = proxy.Rules({"pause": ["aie-s3"], "exec": [dump_rule]})
    assert rules.container("/containers/aie-s3/pause", "pause") == "aie-s3"
    assert rules.container("/containers/aie-s3/pause?x=1", "pause") is None
    assert rules.container("/containers/..%2Fx/pause", "pause") is None
    assert rules.container("/v1.45/containers/aie-s3/pause", "pause") is None
    dump = {"Cmd": ["aie-database", "dump"], "User": "postgres", "AttachStdout": True, "AttachStderr": True}
    assert rules.exec_allowed("aie-database", json.dumps(dump).encode())
    refused = {
        "another container": ("aie-s3", dump),
        "another command": ("aie-database", {**dump, "Cmd": ["sh", "-c", "id"]}),
        "another user": ("aie-database", {**dump, "User": "root"}),
        "privileged": ("aie-database", {**dump, "Privileged": True}),
        "detached": ("aie-database", {**dump, "AttachStdout": False}),
    }
    for what, (container, body) in refused.items():
        assert not rules.exec_allowed(container, json.dumps(body).encode()), what
    assert not rules.exec_allowed("aie-database", b"not json")
    # An exec's start and state only for the execs it created.
    known, other = "a" * 64, "b" * 64
    rules.execs.add(known)
    assert rules.exec_id(f"/exec/{known}/start", "start") == known
    assert rules.exec_id(f"/exec/{other}/start", "start") is None
    assert rules.exec_id(f"/exec/{known}/resize", "start") is None
