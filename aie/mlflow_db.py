"""Where MLflow's two databases (the tracking store, the account store) stand against the MLflow
installed here, and bringing them to it.

The mlflow role runs it in a one-off container of the new MLflow image before that image's
server starts (roles/mlflow/tasks/schema.yml):

    python -m aie.mlflow_db check TRACKING_URI AUTH_URI
    python -m aie.mlflow_db upgrade TRACKING_URI AUTH_URI

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


def _migrate(store: str, url: str) -> None:
    engine = _engine(url)
    try:
        _run_migrations(store, engine)
    finally:
        engine.dispose()


def upgrade(store: str, url: str) -> None:
    path = _sqlite_path(url)
    if path is None:
        _migrate(store, url)
        return
    # On a copy, made with SQLite's backup API (consistent even while another process reads),
    # that takes the file's place only when every migration went through.
    copy = f"{path}.migrating"
    with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)
    try:
        _migrate(store, f"sqlite:///{copy}")
        shutil.copymode(path, copy)
        os.replace(copy, path)
    finally:
        if os.path.exists(copy):
            os.remove(copy)


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
    if len(argv) != 3 or argv[0] not in ("check", "upgrade"):
        print("usage: python -m aie.mlflow_db check|upgrade TRACKING_URI AUTH_URI\n"
              "       python -m aie.mlflow_db move TRACKING_URI AUTH_URI TARGET_TRACKING_URI TARGET_AUTH_URI\n"
              "       python -m aie.mlflow_db admin AUTH_URI USERNAME   (the password on stdin)",
              file=sys.stderr)
        return 2
    urls = {"tracking": argv[1], "auth": argv[2]}
    before = report(urls)
    if argv[0] == "upgrade":
        for store, found in before["stores"].items():
            if found["state"] == "newer":
                print(f"the {store} database is at schema {found['revision']}, which MLflow {before['mlflow']} "
                      "does not know (a newer MLflow migrated it): not migrated", file=sys.stderr)
                return 1
            if found["state"] != "behind":
                continue
            try:
                upgrade(store, urls[store])
            except Exception as error:  # noqa: BLE001 - any failure: one line, the store left as it was
                # SQLAlchemy's first line names the error; its last points to its documentation.
                first = (str(error).strip().splitlines() or [type(error).__name__])[0][:400]
                print(f"MLflow {before['mlflow']} could not migrate the {store} database from schema "
                      f"{found['revision']} to {found['head']}: {first}", file=sys.stderr)
                return 1
        print(json.dumps({**report(urls), "before": before["stores"]}))
        return 0
    print(json.dumps(before))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
