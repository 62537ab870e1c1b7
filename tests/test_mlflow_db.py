"""aie/mlflow_db.py on real SQLite databases made by this virtualenv's MLflow: a store at an older
schema is reported behind and migrated with its runs kept; one at a schema this MLflow does not
know is reported newer and left alone; a migration that fails leaves the file byte for byte as
it was and says which store failed."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import mlflow
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from mlflow.store.db.utils import _get_alembic_config, create_sqlalchemy_engine
from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

from aie import mlflow_db


def older_revision(steps: int) -> str:
    """The revision `steps` migrations below this MLflow's head."""
    revisions = list(ScriptDirectory.from_config(_get_alembic_config("")).walk_revisions())
    return str(revisions[steps].revision)


def tracking_store_at(path: Path, revision: str) -> str:
    """A tracking store made as MLflow makes one, stopped at `revision`, with one run in it."""
    url = f"sqlite:///{path}"
    engine = create_sqlalchemy_engine(url)
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
                   "VALUES (7, 'kept', '/a', 'active')")
        db.execute("INSERT INTO runs (run_uuid, name, experiment_id, lifecycle_stage, status, start_time) "
                   "VALUES ('r1', 'run', 7, 'active', 'FINISHED', 1)")
        db.execute("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                   "VALUES ('loss', 0.5, 1, 'r1', 3, 0)")
    return url


def run_main(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any] | None, str]:
    code = mlflow_db.main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]) if out.strip() else None, err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_and_empty_stores_are_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.db").touch()
    code, out, _ = run_main("check", f"sqlite:///{tmp_path}/absent.db", f"sqlite:///{tmp_path}/empty.db",
                            capsys=capsys)
    assert code == 0 and out is not None
    assert out["mlflow"] == mlflow.__version__
    assert {store: found["state"] for store, found in out["stores"].items()} == {"tracking": "new", "auth": "new"}
    assert not (tmp_path / "absent.db").exists()


def test_a_store_behind_is_migrated_with_its_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = older_revision(2)
    url = tracking_store_at(tmp_path / "mlflow.db", old)
    auth = f"sqlite:///{tmp_path}/auth.db"
    code, out, _ = run_main("check", url, auth, capsys=capsys)
    assert code == 0 and out is not None
    assert out["stores"]["tracking"] == {"state": "behind", "revision": old, "head": older_revision(0)}

    code, out, err = run_main("upgrade", url, auth, capsys=capsys)
    assert code == 0, err
    assert out is not None
    assert out["before"]["tracking"]["state"] == "behind"
    assert out["stores"]["tracking"] == {"state": "current", "revision": older_revision(0), "head": older_revision(0)}
    with closing(sqlite3.connect(tmp_path / "mlflow.db")) as db:
        assert db.execute("SELECT e.name, r.run_uuid, m.value, m.step FROM experiments e JOIN runs r "
                          "ON r.experiment_id = e.experiment_id JOIN metrics m ON m.run_uuid = r.run_uuid"
                          ).fetchall() == [("kept", "r1", 0.5, 3)]
    assert not (tmp_path / "mlflow.db.migrating").exists()


def test_a_store_of_a_newer_mlflow_is_refused_and_left_alone(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mlflow.db"
    url = tracking_store_at(path, older_revision(0))
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE alembic_version SET version_num = 'f00dfeed0001'")
    before = digest(path)
    code, out, _ = run_main("check", url, f"sqlite:///{tmp_path}/auth.db", capsys=capsys)
    assert code == 0 and out is not None
    assert out["stores"]["tracking"]["state"] == "newer"
    code, _, err = run_main("upgrade", url, f"sqlite:///{tmp_path}/auth.db", capsys=capsys)
    assert code == 1
    assert "the tracking database is at schema f00dfeed0001, which MLflow" in err
    assert digest(path) == before


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mlflow.db"
    old = older_revision(1)
    url = tracking_store_at(path, old)
    # The last migration creates a table: one of that name already there makes it fail.
    engine = create_sqlalchemy_engine(url)
    created = set(mlflow_db_tables_after_upgrade(tmp_path)) - set(engine_tables(engine))
    engine.dispose()
    assert created, "the last migration creates no table: pick another way to make it fail"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(f"CREATE TABLE {sorted(created)[0]} (x INTEGER)")
    before = digest(path)
    code, _, err = run_main("upgrade", url, f"sqlite:///{tmp_path}/auth.db", capsys=capsys)
    assert code == 1
    # The last line of the output says it (MLflow logs its steps before it).
    last = err.strip().splitlines()[-1]
    assert f"could not migrate the tracking database from schema {old} to {older_revision(0)}: " in last
    assert "already exists" in last
    assert digest(path) == before
    assert not (tmp_path / "mlflow.db.migrating").exists()


def engine_tables(engine: Any) -> list[str]:
    from sqlalchemy import inspect

    return list(inspect(engine).get_table_names())


def mlflow_db_tables_after_upgrade(tmp_path: Path) -> list[str]:
    """The tables of a store one migration below head, once migrated (on a scratch copy)."""
    scratch = tmp_path / "scratch.db"
    url = tracking_store_at(scratch, older_revision(1))
    mlflow_db.upgrade("tracking", url)
    engine = create_sqlalchemy_engine(url)
    try:
        return engine_tables(engine)
    finally:
        engine.dispose()


def filled_stores(folder: Path) -> dict[str, str]:
    """A tracking store and an account store with what users keep in them, made by MLflow."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    urls = {"tracking": f"sqlite:///{folder}/mlflow.db", "auth": f"sqlite:///{folder}/basic_auth.db"}
    client = mlflow.MlflowClient(urls["tracking"])
    experiment = client.create_experiment("moved")
    for number in range(3):
        run = client.create_run(experiment, run_name=f"run-{number}")
        client.log_batch(run.info.run_id, metrics=[Metric("loss", 1 / (step + 1), 1000 + step, step)
                                                   for step in range(50)] + [Metric("gap", float("nan"), 1, 0)],
                         params=[Param("lr", str(number))], tags=[RunTag("team", "a")])
    client.create_registered_model("model")
    version = client.create_model_version("model", f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias("model", "champion", version.version)
    client.create_logged_model(experiment, name="logged")
    accounts = SqlAlchemyStore()
    accounts.init_db(urls["auth"])
    accounts.create_user("alice", "alice-password-0123456789", False)
    accounts.engine.dispose()
    return urls


def test_a_move_copies_every_row_and_refuses_a_target_with_data(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "from").mkdir()
    (tmp_path / "to").mkdir()
    sources = filled_stores(tmp_path / "from")
    targets = {"tracking": f"sqlite:///{tmp_path}/to/mlflow.db", "auth": f"sqlite:///{tmp_path}/to/basic_auth.db"}
    code, out, err = run_main("move", sources["tracking"], sources["auth"], targets["tracking"], targets["auth"],
                              capsys=capsys)
    assert code == 0, err
    assert out is not None
    moved = out["moved"]
    assert moved["tracking"]["runs"] == 3 and moved["tracking"]["metrics"] == 3 * 51
    assert moved["tracking"]["model_versions"] == 1 and moved["tracking"]["registered_model_aliases"] == 1
    assert moved["tracking"]["logged_models"] == 1 and moved["auth"]["users"] == 1
    before, after = mlflow.MlflowClient(sources["tracking"]), mlflow.MlflowClient(targets["tracking"])
    runs = before.search_runs([before.get_experiment_by_name("moved").experiment_id])
    for run in runs:
        assert (after.get_run(run.info.run_id).data.to_dictionary().keys()
                == run.data.to_dictionary().keys())
        assert after.get_run(run.info.run_id).data.params == run.data.params
        assert ([(m.step, m.value, m.timestamp) for m in after.get_metric_history(run.info.run_id, "loss")]
                == [(m.step, m.value, m.timestamp) for m in before.get_metric_history(run.info.run_id, "loss")])
    assert after.get_model_version_by_alias("model", "champion").run_id in {run.info.run_id for run in runs}
    with closing(sqlite3.connect(tmp_path / "to" / "basic_auth.db")) as db:
        assert db.execute("SELECT username FROM users").fetchall() == [("alice",)]
    # A second move finds the target filled, and copies nothing over it.
    kept = digest(tmp_path / "to" / "mlflow.db")
    code, _, err = run_main("move", sources["tracking"], sources["auth"], targets["tracking"], targets["auth"],
                            capsys=capsys)
    assert code == 1
    assert "MLflow's databases were not moved: the target tracking database is not empty" in err
    assert digest(tmp_path / "to" / "mlflow.db") == kept


def test_a_move_that_finds_a_difference_leaves_the_target_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "from").mkdir()
    sources = filled_stores(tmp_path / "from")
    target = f"sqlite:///{tmp_path}/to.db"
    monkeypatch.setattr(mlflow_db, "_same", lambda left, right: not (isinstance(left, float) and left > 0.9))
    code, _, err = run_main("move", sources["tracking"], sources["auth"], target, f"sqlite:///{tmp_path}/auth.db",
                            capsys=capsys)
    assert code == 1
    assert "differs once copied" in err.strip().splitlines()[-1]
    engine = create_sqlalchemy_engine(target)
    try:
        assert engine_tables(engine) == []
    finally:
        engine.dispose()


def test_a_move_that_fails_in_its_second_store_leaves_both_targets_empty_and_can_be_run_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "from").mkdir()
    sources = filled_stores(tmp_path / "from")
    targets = {"tracking": f"sqlite:///{tmp_path}/mlflow.db", "auth": f"sqlite:///{tmp_path}/basic_auth.db"}
    copy = mlflow_db.copy_store

    def fails_on_the_accounts(store: str, source: str, target: str) -> dict[str, int]:
        if store == "auth":
            raise ValueError("the account store could not be reached")
        return copy(store, source, target)

    monkeypatch.setattr(mlflow_db, "copy_store", fails_on_the_accounts)
    code, _, err = run_main("move", sources["tracking"], sources["auth"], targets["tracking"], targets["auth"],
                            capsys=capsys)
    assert code == 1 and "the account store could not be reached" in err
    for url in targets.values():
        assert mlflow_db._tables(url) == [], url
    # Run again (the cause gone), it moves both.
    monkeypatch.setattr(mlflow_db, "copy_store", copy)
    code, out, err = run_main("move", sources["tracking"], sources["auth"], targets["tracking"], targets["auth"],
                              capsys=capsys)
    assert code == 0, err
    assert out is not None and out["moved"]["tracking"]["runs"] == 3 and out["moved"]["auth"]["users"] == 1
    assert mlflow_db.UNFINISHED not in mlflow_db._tables(targets["tracking"])


def test_a_move_that_was_killed_is_done_again_over_its_own_half_copy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "from").mkdir()
    sources = filled_stores(tmp_path / "from")
    targets = {"tracking": f"sqlite:///{tmp_path}/mlflow.db", "auth": f"sqlite:///{tmp_path}/basic_auth.db"}
    # What a move killed while it copied the tracking store leaves: its mark, MLflow's schema, some rows.
    mlflow_db._mark(targets["tracking"])
    mlflow_db._create("tracking", mlflow_db._engine(targets["tracking"]))
    with closing(sqlite3.connect(tmp_path / "mlflow.db")) as db, db:
        db.execute("INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
                   "VALUES (99, 'half', '/a', 'active')")
    code, out, err = run_main("move", sources["tracking"], sources["auth"], targets["tracking"], targets["auth"],
                              capsys=capsys)
    assert code == 0, err
    assert out is not None and out["moved"]["tracking"]["runs"] == 3
    with closing(sqlite3.connect(tmp_path / "mlflow.db")) as db:
        assert db.execute("SELECT count(*) FROM experiments WHERE name = 'half'").fetchone() == (0,)
    assert mlflow_db.UNFINISHED not in mlflow_db._tables(targets["tracking"])


def test_admin_account_is_made_once_with_the_password_from_stdin(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    url = f"sqlite:///{tmp_path}/basic_auth.db"
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-admin-password-0123\n"))
    assert run_main("admin", url, "admin", capsys=capsys)[:2] == (0, {"admin": "created"})
    # A second run finds the account and keeps its password, whatever stdin says.
    monkeypatch.setattr("sys.stdin", io.StringIO("another-long-password-4567\n"))
    assert run_main("admin", url, "admin", capsys=capsys)[:2] == (0, {"admin": "present"})
    store = SqlAlchemyStore()
    store.init_db(url)
    assert store.authenticate_user("admin", "a-long-admin-password-0123")
    assert not store.authenticate_user("admin", "another-long-password-4567")
    assert store.get_user("admin").is_admin
    store.engine.dispose()
    # The store is then at MLflow's schema: the server starts on it as on one it made itself.
    code, out, _ = run_main("check", f"sqlite:///{tmp_path}/tracking.db", url, capsys=capsys)
    assert code == 0 and out is not None and out["stores"]["auth"]["state"] == "current"


def test_an_admin_password_that_mlflow_refuses_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    code, out, err = run_main("admin", f"sqlite:///{tmp_path}/basic_auth.db", "admin", capsys=capsys)
    assert code == 1 and out is None
    assert err.startswith("MLflow's admin account 'admin' was not created: "), err
    assert "password" in err.lower(), err


# The experiments aie manages, as the mlflow role names them (roles/mlflow/vars/main.yml), with
# the direct locations an earlier release made them at.
TAG = "aie.artifact_store"
EARLIER = {"notebooks-sftp": ("sftp", "sftp://aie@aie-sftp/notebooks-sftp"),
           "notebooks-s3": ("s3", "s3://mlflow/notebooks-s3")}
MANAGED = {"tag": TAG, "experiments": [{"name": name, "store": store, "earlier_location": location}
                                       for name, (store, location) in EARLIER.items()]}


def earlier_experiments(folder: Path) -> dict[str, Any]:
    """A tracking store made by MLflow as an earlier release left it: the managed experiments at
    their direct locations (notebooks-s3 already tagged, as main's mlflow_setup did), a run in
    each; a user's own experiment at a direct location; a managed name that is elsewhere."""
    url = f"sqlite:///{folder}/mlflow.db"
    client = mlflow.MlflowClient(url)
    ids = {name: client.create_experiment(name, artifact_location=location)
           for name, (_, location) in EARLIER.items()}
    client.set_experiment_tag(ids["notebooks-s3"], TAG, "s3")
    ids["own"] = client.create_experiment("own", artifact_location="sftp://aie@aie-sftp/own")
    runs = {name: client.create_run(ids[name]).info for name in ids}
    return {"url": url, "client": client, "ids": ids, "runs": runs}


def locations(client: mlflow.MlflowClient, ids: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    return {name: (client.get_experiment(id_).artifact_location, client.get_experiment(id_).tags.get(TAG))
            for name, id_ in ids.items()}


def test_relocation_moves_the_managed_experiments_at_their_earlier_location_behind_the_server(
        tmp_path: Path) -> None:
    made = earlier_experiments(tmp_path)
    client, ids = made["client"], made["ids"]
    moved = mlflow_db.relocate(made["url"], MANAGED)
    assert sorted((move["name"], move["id"], move["store"], move["was"]) for move in moved) == sorted(
        (name, ids[name], store, location) for name, (store, location) in EARLIER.items())
    assert locations(client, ids) == {"notebooks-sftp": (f"mlflow-artifacts:/{ids['notebooks-sftp']}", "sftp"),
                                      "notebooks-s3": (f"mlflow-artifacts:/{ids['notebooks-s3']}", "s3"),
                                      "own": ("sftp://aie@aie-sftp/own", None)}
    # The runs logged before keep their own artifact URIs; new ones go through the server.
    for name, info in made["runs"].items():
        assert client.get_run(info.run_id).info.artifact_uri == info.artifact_uri, name
        assert info.artifact_uri.startswith(("sftp://", "s3://")), info.artifact_uri
    new = client.create_run(ids["notebooks-sftp"]).info
    assert new.artifact_uri == f"mlflow-artifacts:/{ids['notebooks-sftp']}/{new.run_id}/artifacts"
    # Once done, there is nothing more to do, and nothing changes.
    before = digest(tmp_path / "mlflow.db")
    assert mlflow_db.relocate(made["url"], MANAGED) == []
    assert digest(tmp_path / "mlflow.db") == before


def test_relocation_in_check_mode_lists_and_changes_nothing(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    made = earlier_experiments(tmp_path)
    before = digest(tmp_path / "mlflow.db")
    assert [move["name"] for move in mlflow_db.relocate(made["url"], MANAGED, check=True)] == list(EARLIER)
    code, out, err = run_main("check", made["url"], f"sqlite:///{tmp_path}/auth.db", json.dumps(MANAGED),
                              capsys=capsys)
    assert code == 0, err
    assert out is not None and out["relocate"] == [
        {"name": name, "id": made["ids"][name], "store": store, "was": location}
        for name, (store, location) in EARLIER.items()]
    assert digest(tmp_path / "mlflow.db") == before


def test_experiments_elsewhere_are_left_as_they_are(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(url)
    # Made by aie behind the server, by a user at another direct location, and one deleted.
    client.create_experiment("notebooks-sftp", artifact_location="mlflow-artifacts:/1", tags={TAG: "sftp"})
    client.create_experiment("notebooks-s3", artifact_location="s3://other/notebooks-s3")
    gone = client.create_experiment("gone", artifact_location="sftp://aie@aie-sftp/gone")
    client.delete_experiment(gone)
    managed = {**MANAGED, "experiments": [*MANAGED["experiments"],
                                          {"name": "gone", "store": "sftp", "earlier_location": "sftp://aie@aie-sftp/gone"}]}
    before = digest(tmp_path / "mlflow.db")
    assert mlflow_db.relocate(url, managed) == []
    assert digest(tmp_path / "mlflow.db") == before


def test_upgrade_migrates_then_relocates_and_a_second_upgrade_does_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mlflow.db"
    url = tracking_store_at(path, older_revision(2))
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
                   "VALUES (8, 'notebooks-sftp', 'sftp://aie@aie-sftp/notebooks-sftp', 'active')")
    auth = f"sqlite:///{tmp_path}/auth.db"
    code, out, err = run_main("upgrade", url, auth, json.dumps(MANAGED), capsys=capsys)
    assert code == 0, err
    assert out is not None and out["stores"]["tracking"]["state"] == "current"
    assert out["relocated"] == [{"name": "notebooks-sftp", "id": "8", "store": "sftp",
                                 "was": "sftp://aie@aie-sftp/notebooks-sftp"}]
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT e.artifact_location, t.value FROM experiments e JOIN experiment_tags t "
                          "ON t.experiment_id = e.experiment_id AND t.key = ? WHERE e.name = 'notebooks-sftp'",
                          (TAG,)).fetchall() == [("mlflow-artifacts:/8", "sftp")]
        assert db.execute("SELECT artifact_location FROM experiments WHERE name = 'kept'").fetchall() == [("/a",)]
    before = digest(path)
    code, out, err = run_main("upgrade", url, auth, json.dumps(MANAGED), capsys=capsys)
    assert code == 0, err
    assert out is not None and out["relocated"] == []
    assert digest(path) == before


def test_a_failed_migration_puts_the_relocated_experiments_back(tmp_path: Path) -> None:
    # Straight on the database, as on PostgreSQL (SQLite's copy would be dropped whole): a store
    # one migration behind, whose last migration fails on a table of its name already there.
    path = tmp_path / "mlflow.db"
    url = tracking_store_at(path, older_revision(1))
    engine = create_sqlalchemy_engine(url)
    created = sorted(set(mlflow_db_tables_after_upgrade(tmp_path)) - set(engine_tables(engine)))
    engine.dispose()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(f"CREATE TABLE {created[0]} (x INTEGER)")
        db.execute("INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
                   "VALUES (8, 'notebooks-sftp', 'sftp://aie@aie-sftp/notebooks-sftp', 'active')")
        db.execute("INSERT INTO experiment_tags (key, value, experiment_id) VALUES (?, 'sftp', 8)", (TAG,))
        db.execute("INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
                   "VALUES (9, 'notebooks-s3', 's3://mlflow/notebooks-s3', 'active')")
    moves = mlflow_db.relocations(url, MANAGED)
    assert [move["id"] for move in moves] == ["8", "9"]
    with pytest.raises(Exception, match=created[0]):
        mlflow_db._migrate("tracking", url, True, moves, TAG)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT e.experiment_id, e.artifact_location, t.value FROM experiments e LEFT JOIN "
                          "experiment_tags t ON t.experiment_id = e.experiment_id AND t.key = ? "
                          "WHERE e.experiment_id IN (8, 9) ORDER BY 1", (TAG,)).fetchall() == [
            (8, "sftp://aie@aie-sftp/notebooks-sftp", "sftp"), (9, "s3://mlflow/notebooks-s3", None)]
    assert mlflow_db.relocations(url, MANAGED) == moves


@pytest.mark.parametrize(("managed", "culprit"), [
    ("not json", "the managed experiments are not JSON"),
    ('{"experiments": []}', "an object with a `tag`"),
    ('{"tag": "t", "experiments": [{"name": "a", "store": "sftp"}]}',
     "#1 ({'name': 'a', 'store': 'sftp'}) has no earlier_location"),
])
def test_bad_managed_experiments_are_named_before_anything_changes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], managed: str, culprit: str) -> None:
    made = earlier_experiments(tmp_path)
    before = digest(tmp_path / "mlflow.db")
    code, out, err = run_main("upgrade", made["url"], f"sqlite:///{tmp_path}/auth.db", managed, capsys=capsys)
    assert code == 2 and out is None
    assert culprit in err, err
    assert digest(tmp_path / "mlflow.db") == before
