"""Where MLflow's two databases (the tracking store, the account store) stand against the MLflow
installed here, and bringing them to it.

The mlflow role runs it in a one-off container of the new MLflow image before that image's
server starts (roles/mlflow/tasks/schema.yml):

    python -m aie.mlflow_db check TRACKING_URI AUTH_URI [MANAGED]
    python -m aie.mlflow_db upgrade TRACKING_URI AUTH_URI [MANAGED]

``check`` prints one JSON object: this MLflow's version, and for each store its ``state`` with
its ``revision`` and this MLflow's ``head``:
- ``new``: no tables yet (the server creates them when it starts);
- ``current``: at this MLflow's schema;
- ``behind``: at an older schema this MLflow knows: ``upgrade`` migrates it;
- ``newer``: at a schema this MLflow does not know: a newer MLflow migrated it, and running an
  older one on it is a downgrade, which MLflow's migrations cannot undo.
``upgrade`` runs the migrations of each store that is ``behind`` (MLflow's own: those of
``mlflow db upgrade`` and of its basic-auth app), prints the same JSON as ``check`` afterwards,
and exits 1 with one line naming the store and the revisions when one fails. Each store is
migrated in one transaction (alembic's default): on PostgreSQL a failed migration leaves the
database as it was; SQLite, whose schema changes MLflow makes by copying tables, is migrated on
a copy that replaces the file only once every migration went through.

MANAGED (JSON: ``{"tag": "aie.artifact_store", "experiments": [{"name": ..., "store": ...,
"earlier_location": ...}]}``) names the experiments aie manages, each with the direct location an
earlier release made it at (``sftp://...`` or ``s3://...``). MLflow has no API to change an
experiment's artifact location: ``check`` lists under ``relocate`` each one still active at that
location, and ``upgrade`` moves it behind the server (``mlflow-artifacts:/<id>``, its tag set to
its store; aie/artifact_routes.py routes its new runs there) and lists it under ``relocated``.
Only the experiment's location changes: its runs keep their own artifact URIs (MLflow stores
one per run), read directly with the storage accounts as before. An experiment at any other
location is left as it is. The relocation comes before the migrations and goes with them: on
SQLite into the same copy; on PostgreSQL, a failed migration puts the locations and tags back.

    python -m aie.mlflow_db admin AUTH_URI USERNAME   (the password on stdin)

``admin`` makes the account store (MLflow's basic-auth schema) and its admin account, unless the
account is there: the tracking server is then never given the admin password, which MLflow reads
only to create that account. It prints ``{"admin": "created"}`` or ``{"admin": "present"}``.

The passwords of PostgreSQL come from libpq's password file (PGPASSFILE), never from a URI.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import time
from contextlib import closing
from typing import Any

# The alembic version table of each store: MLflow's default for the tracking store, its own
# for the basic-auth app's account store.
VERSION_TABLES = {"tracking": "alembic_version", "auth": "alembic_version_auth"}
# A move copies rows this many at a time, and compares this many of each table once copied.
BATCH = 5000
SAMPLE = 200
# The table by which a move marks the databases it copies into until it has copied both.
UNFINISHED = "aie_move_unfinished"
# The fields of each experiment of MANAGED.
MANAGED_FIELDS = ("name", "store", "earlier_location")


def _utils(store: str) -> Any:
    """MLflow's database helpers of a store (typed as Any: mlflow declares none of their types).
    They are imported here, not at the top: importing mlflow takes seconds."""
    if store == "tracking":
        import mlflow.store.db.utils as tracking

        return tracking
    import mlflow.server.auth.db.utils as auth

    return auth


def _alembic_config(store: str, url: str) -> Any:
    return _utils(store)._get_alembic_config(url)


def _sqlite_path(url: str) -> str | None:
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else None


def _engine(url: str) -> Any:
    return _utils("tracking").create_sqlalchemy_engine(url)


def state(store: str, url: str) -> dict[str, Any]:
    """Where one store stands: its revision, this MLflow's head, and what that means."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect

    script = ScriptDirectory.from_config(_alembic_config(store, url))
    head = script.get_current_head()
    path = _sqlite_path(url)
    if path is not None and not os.path.exists(path):
        return {"state": "new", "revision": None, "head": head}
    engine = _engine(url)
    try:
        tables = [table for table in inspect(engine).get_table_names() if not table.startswith("alembic_")]
        if not tables:
            return {"state": "new", "revision": None, "head": head}
        with engine.connect() as connection:
            revision = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLES[store]}).get_current_revision()
    finally:
        engine.dispose()
    known = {entry.revision for entry in script.walk_revisions()}
    if revision == head:
        status = "current"
    elif revision is None or revision in known:
        # None: an account store made before MLflow 3.6 versioned it (its migration stamps it).
        status = "behind"
    else:
        status = "newer"
    return {"state": status, "revision": revision, "head": head}


def _run_migrations(store: str, engine: Any) -> None:
    if store == "tracking":
        _utils(store)._upgrade_db(engine)
    else:
        _utils(store).migrate(engine, "head")


def managed_experiments(text: str) -> dict[str, Any]:
    """MANAGED, read and checked: a ValueError names what is wrong before anything changes."""
    try:
        managed = json.loads(text)
    except ValueError as error:
        raise ValueError(f"the managed experiments are not JSON: {error}") from None
    if not isinstance(managed, dict) or not isinstance(managed.get("tag"), str) or not managed["tag"]:
        raise ValueError("the managed experiments: an object with a `tag` (the store tag) is expected")
    experiments = managed.get("experiments")
    if not isinstance(experiments, list):
        raise ValueError("the managed experiments: `experiments` is not a list")
    for number, experiment in enumerate(experiments):
        missing = [field for field in MANAGED_FIELDS if not isinstance(experiment, dict)
                   or not isinstance(experiment.get(field), str) or not experiment[field]]
        if missing:
            raise ValueError(f"the managed experiment #{number + 1} ({experiment!r:.100}) has no {', '.join(missing)}")
    return {"tag": managed["tag"], "experiments": experiments}


def _relocations(connection: Any, managed: dict[str, Any]) -> list[dict[str, Any]]:
    """The managed experiments still active at their earlier location, each with the value its
    store tag has now (None: no tag). Only columns that every schema of MLflow's has are read, so
    that a store behind can be asked too."""
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlExperimentTag
    from sqlalchemy import and_, select

    found = []
    for experiment in managed["experiments"]:
        row = connection.execute(
            select(SqlExperiment.experiment_id, SqlExperimentTag.value)
            .outerjoin(SqlExperimentTag, and_(SqlExperimentTag.experiment_id == SqlExperiment.experiment_id,
                                              SqlExperimentTag.key == managed["tag"]))
            .where(SqlExperiment.name == experiment["name"],
                   SqlExperiment.artifact_location == experiment["earlier_location"],
                   SqlExperiment.lifecycle_stage == "active")).first()
        if row is not None:
            found.append({"name": experiment["name"], "id": str(row[0]), "store": experiment["store"],
                          "was": experiment["earlier_location"], "tag_was": row[1]})
    return found


def relocations(url: str, managed: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``upgrade`` would relocate in the tracking store at url (nothing in a new one)."""
    if state("tracking", url)["state"] == "new":
        return []
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            return _relocations(connection, managed)
    finally:
        engine.dispose()


def _set_tag(connection: Any, experiment_id: int, tag: str, value: str | None) -> None:
    """The store tag of an experiment set (or removed: None). An update, else an insert, by hand:
    SQLAlchemy's upserts are one per dialect (SQLite's and PostgreSQL's ON CONFLICT)."""
    from mlflow.store.tracking.dbmodels.models import SqlExperimentTag
    from sqlalchemy import delete, insert, update

    where = (SqlExperimentTag.experiment_id == experiment_id, SqlExperimentTag.key == tag)
    if value is None:
        connection.execute(delete(SqlExperimentTag).where(*where))
    elif connection.execute(update(SqlExperimentTag).where(*where).values(value=value)).rowcount == 0:
        connection.execute(insert(SqlExperimentTag).values(experiment_id=experiment_id, key=tag, value=value))


def _locate(engine: Any, moves: list[dict[str, Any]], tag: str, back: bool = False) -> None:
    """In one transaction: each experiment of moves from its earlier location to the proxied one
    (mlflow-artifacts:/<id>, MLflow's own for an experiment made without a location) with its
    store tag; or, back, to its earlier location and tag. Each must be where moves found it."""
    from mlflow.store.tracking.dbmodels.models import SqlExperiment
    from sqlalchemy import update

    with engine.begin() as connection:
        for move in moves:
            proxied, identifier = f"mlflow-artifacts:/{move['id']}", int(move["id"])
            source, target = (proxied, move["was"]) if back else (move["was"], proxied)
            done = connection.execute(update(SqlExperiment).where(
                SqlExperiment.experiment_id == identifier, SqlExperiment.artifact_location == source,
            ).values(artifact_location=target)).rowcount
            if done != 1:
                raise ValueError(f"experiment {move['name']} is no longer at {source}: not relocated")
            _set_tag(connection, identifier, tag, move["tag_was"] if back else move["store"])


def _migrate(store: str, url: str, behind: bool, moves: list[dict[str, Any]], tag: str) -> None:
    """The relocation, then the migrations (MLflow's run in a transaction of their own, on a
    connection of their own: its env.py opens one): a failed migration puts the experiments back."""
    engine = _engine(url)
    try:
        _locate(engine, moves, tag)
        if not behind:
            return
        try:
            _run_migrations(store, engine)
        except BaseException:
            _locate(engine, moves, tag, back=True)
            raise
    finally:
        engine.dispose()


def upgrade(store: str, url: str, behind: bool = True, moves: list[dict[str, Any]] | None = None,
            tag: str = "") -> None:
    """The store's migrations (when behind) and the relocation of moves (relocations' answer)."""
    path = _sqlite_path(url)
    if path is None or not behind:
        # A relocation alone is one transaction, on SQLite too.
        _migrate(store, url, behind, moves or [], tag)
        return
    # On a copy, made with SQLite's backup API (consistent even while another process reads),
    # that takes the file's place only when every migration went through.
    copy = f"{path}.migrating"
    with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)
    try:
        _migrate(store, f"sqlite:///{copy}", behind, moves or [], tag)
        shutil.copymode(path, copy)
        os.replace(copy, path)
    finally:
        if os.path.exists(copy):
            os.remove(copy)


def relocate(url: str, managed: dict[str, Any], check: bool = False) -> list[dict[str, Any]]:
    """The managed experiments at their earlier location moved behind the server (in check mode,
    only listed); returns them, each with its former location (``was``)."""
    moves = relocations(url, managed)
    if moves and not check:
        upgrade("tracking", url, behind=False, moves=moves, tag=managed["tag"])
    return moves


def _create(store: str, engine: Any) -> None:
    """This MLflow's schema in an empty database, made by MLflow's own functions (the account
    store's migrations start from nothing; the tracking store's from MLflow's initial tables)."""
    if store == "tracking":
        _utils(store)._initialize_tables(engine)
    else:
        _run_migrations(store, engine)


def _drop(engine: Any) -> None:
    """Every table of a database (with the sequences of their keys): empty again."""
    from sqlalchemy import MetaData

    tables = MetaData()
    tables.reflect(engine)
    tables.drop_all(engine)


def _rows(connection: Any, table: Any) -> int:
    from sqlalchemy import func, select

    return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def _same(left: Any, right: Any) -> bool:
    """Equal values, NaN equal to NaN (MLflow keeps NaN metrics)."""
    if isinstance(left, float) and isinstance(right, float) and left != left and right != right:
        return True
    return bool(left == right)


def copy_store(store: str, source_url: str, target_url: str, sample: int = SAMPLE) -> dict[str, int]:
    """A store into an empty database: MLflow's schema is made there; then, in one transaction,
    every row of every table is copied in the order of their foreign keys (the rows MLflow's
    migrations seed, a default workspace say, are the source's), PostgreSQL's sequences are set
    past the copied keys, and each table's rows are counted and a sample of them (the first by
    primary key) compared value by value. Any failure rolls the copy back and drops the schema:
    the database is empty again.

    Hand-written rather than a tool's: MLflow offers none, and a generic copier (pgloader, say)
    makes its own schema from SQLite's, not the one MLflow's migrations expect."""
    from sqlalchemy import MetaData, and_, insert, select, text

    source_engine, target_engine = _engine(source_url), _engine(target_url)
    try:
        counts: dict[str, int] = {}
        _create(store, target_engine)
        with source_engine.connect() as source, target_engine.begin() as target:
            source_meta, target_meta = MetaData(), MetaData()
            source_meta.reflect(source)
            target_meta.reflect(target)
            tables = [table for table in target_meta.sorted_tables
                      if not table.name.startswith("alembic_") and table.name in source_meta.tables]
            for table in reversed(tables):
                target.execute(table.delete())
            for table in tables:
                origin = source_meta.tables[table.name]
                columns = [column.name for column in table.columns if column.name in origin.columns]
                result = source.execution_options(stream_results=True).execute(
                    select(*(origin.columns[name] for name in columns)))
                while batch := result.fetchmany(BATCH):
                    target.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in batch])
                if target_engine.dialect.name == "postgresql":
                    for column in table.primary_key.columns:
                        sequence = target.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                                  {"t": table.name, "c": column.name}).scalar()
                        if sequence:
                            target.execute(text(f'SELECT setval(:s, COALESCE((SELECT max("{column.name}") FROM '
                                                f'"{table.name}"), 0) + 1, false)'), {"s": sequence})
                counts[table.name], expected = _rows(target, table), _rows(source, origin)
                if counts[table.name] != expected:
                    raise ValueError(f"{table.name}: {expected} rows, {counts[table.name]} copied")
                keys = [column.name for column in table.primary_key.columns]
                for row in source.execute(select(*(origin.columns[name] for name in columns)).order_by(
                        *(origin.columns[name] for name in keys)).limit(sample if keys else 0)).all():
                    values = dict(zip(columns, row, strict=True))
                    match = target.execute(select(*(table.columns[name] for name in columns)).where(
                        and_(*(table.columns[name] == values[name] for name in keys)))).one_or_none()
                    if match is None or not all(map(_same, row, match)):
                        raise ValueError(f"{table.name}: the row {[values[name] for name in keys]} differs once copied")
        return counts
    except BaseException:
        _drop(target_engine)
        raise
    finally:
        source_engine.dispose()
        target_engine.dispose()


def _tables(url: str) -> list[str]:
    from sqlalchemy import inspect

    engine = _engine(url)
    try:
        return list(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _empty(url: str) -> None:
    engine = _engine(url)
    try:
        _drop(engine)
    finally:
        engine.dispose()


def _execute(url: str, statement: str) -> None:
    from sqlalchemy import text

    engine = _engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def _mark(url: str) -> None:
    _execute(url, f"CREATE TABLE IF NOT EXISTS {UNFINISHED} (started VARCHAR(40))")


def _unmark(url: str) -> None:
    _execute(url, f"DROP TABLE IF EXISTS {UNFINISHED}")


def move(sources: dict[str, str], targets: dict[str, str]) -> dict[str, Any]:
    """Both stores from their databases (SQLite) into empty ones (PostgreSQL): each source must be
    at this MLflow's schema, each target empty, or left by a move that did not finish.

    Each target is marked (the table UNFINISHED) before anything is copied into it, and unmarked
    once both stores are copied: a move that fails empties every target again, and one that was
    killed leaves the mark, by which the next move knows the target's tables for its own and
    empties them before it copies. A target with tables and no mark is never written to."""
    started = time.monotonic()
    stores = {}
    for store, source in sources.items():
        found = state(store, source)
        if found["state"] == "new":
            continue
        if found["state"] != "current":
            raise ValueError(f"the {store} database is at schema {found['revision']}, not at MLflow's "
                             f"{found['head']}: bring it there first (aie up)")
        tables = _tables(targets[store])
        if UNFINISHED in tables:
            _empty(targets[store])
        elif state(store, targets[store])["state"] != "new":
            raise ValueError(f"the target {store} database is not empty: nothing is copied over it")
        stores[store] = source
    moved: dict[str, Any] = {}
    try:
        for store in stores:
            _mark(targets[store])
        for store, source in stores.items():
            moved[store] = copy_store(store, source, targets[store])
    except BaseException:
        for store in stores:
            _empty(targets[store])
        raise
    for store in stores:
        _unmark(targets[store])
    return {"moved": moved, "seconds": round(time.monotonic() - started, 1)}


def create_admin(url: str, username: str, password: str) -> bool:
    """The account store at MLflow's schema, with its admin account; False when it was there."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store: Any = SqlAlchemyStore()  # mlflow declares none of its types
    store.init_db(url)
    try:
        if store.has_user(username, use_primary=True):
            return False
        store.create_user(username, password, is_admin=True)
        return True
    finally:
        store.engine.dispose()


def report(urls: dict[str, str]) -> dict[str, Any]:
    import mlflow

    return {"mlflow": mlflow.__version__, "stores": {store: state(store, url) for store, url in urls.items()}}


def main(argv: list[str]) -> int:
    if argv[:1] == ["move"] and len(argv) == 5:
        try:
            print(json.dumps(move({"tracking": argv[1], "auth": argv[2]}, {"tracking": argv[3], "auth": argv[4]})))
        except Exception as error:  # noqa: BLE001 - any failure: one line; the target's copy was rolled back
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:400]
            print(f"MLflow's databases were not moved: {first}", file=sys.stderr)
            return 1
        return 0
    if argv[:1] == ["admin"] and len(argv) == 3:
        password = sys.stdin.read().strip()
        if not password:
            print("no admin password on stdin", file=sys.stderr)
            return 2
        try:
            created = create_admin(argv[1], argv[2], password)
        except Exception as error:  # noqa: BLE001 - any failure: one line (MLflow's password policy, say)
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:400]
            print(f"MLflow's admin account {argv[2]!r} was not created: {first}", file=sys.stderr)
            return 1
        print(json.dumps({"admin": "created" if created else "present"}))
        return 0
    if len(argv) not in (3, 4) or argv[0] not in ("check", "upgrade"):
        print("usage: python -m aie.mlflow_db check|upgrade TRACKING_URI AUTH_URI [MANAGED]\n"
              "       python -m aie.mlflow_db move TRACKING_URI AUTH_URI TARGET_TRACKING_URI TARGET_AUTH_URI\n"
              "       python -m aie.mlflow_db admin AUTH_URI USERNAME   (the password on stdin)",
              file=sys.stderr)
        return 2
    try:
        managed: dict[str, Any] = managed_experiments(argv[3]) if len(argv) == 4 else {"tag": "", "experiments": []}
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    urls = {"tracking": argv[1], "auth": argv[2]}
    before = report(urls)
    moves = relocations(urls["tracking"], managed)
    if argv[0] == "upgrade":
        for store, found in before["stores"].items():
            if found["state"] == "newer":
                print(f"the {store} database is at schema {found['revision']}, which MLflow {before['mlflow']} "
                      "does not know (a newer MLflow migrated it): not migrated", file=sys.stderr)
                return 1
        for store, found in before["stores"].items():
            relocating = moves if store == "tracking" else []
            if found["state"] != "behind" and not relocating:
                continue
            try:
                upgrade(store, urls[store], behind=found["state"] == "behind", moves=relocating, tag=managed["tag"])
            except Exception as error:  # noqa: BLE001 - any failure: one line, the store left as it was
                # SQLAlchemy's first line names the error; its last points to its documentation.
                first = (str(error).strip().splitlines() or [type(error).__name__])[0][:400]
                done = (f"migrate the {store} database from schema {found['revision']} to {found['head']}"
                        if found["state"] == "behind" else f"relocate the experiments of the {store} database")
                print(f"MLflow {before['mlflow']} could not {done}: {first}", file=sys.stderr)
                return 1
        print(json.dumps({**report(urls), "before": before["stores"], "relocated": _shown(moves)}))
        return 0
    print(json.dumps({**before, "relocate": _shown(moves)}))
    return 0


def _shown(moves: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The relocations as reported: name, id, store and former location."""
    return [{key: move[key] for key in ("name", "id", "store", "was")} for move in moves]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
