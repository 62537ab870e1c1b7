"""Bring an MLflow tracking server (with its basic-auth app on) to the experiments and accounts
it should have: create what is missing, correct what differs, report what changed.

The mlflow role runs it in the server's container (``python -m aie.mlflow_setup``, settings
on stdin). It uses the standard library only: importing mlflow for its AuthServiceClient takes
about 3 s on every ``aie up``, for the same handful of documented REST calls made here.

    echo '{"url": ..., "ca_file": ..., "admin": {"username": ..., "password": ...},
           "experiments": [{"name": ..., "store": ..., "artifact_location": ..., "earlier_location": ...}],
           "store_tag": "aie.artifact_store",
           "accounts": [{"username": ..., "password": ..., "admin": false,
                         "permissions": {"<experiment>": "EDIT"}}],
           "retired": ["<name>"],
           "check": false}' | python -m aie.mlflow_setup

The settings come on stdin because they hold passwords: a command line or an environment
given through a shell can be read by other users of the host. ``ca_file`` is the CA bundle an
https url is checked against (the system's when absent). Prints one JSON object,
``{"changed": [...]}``, one line per change (made, or in check mode to be made); on an error,
prints one line naming the culprit to stderr and exits 1. Passwords are never printed.
``retired`` names accounts that aie made and the inventory no longer lists (a person removed
from ``mlflow_users``): they are deleted where they exist, with their permissions. Accounts
neither listed nor retired are left alone (admins may add users in the UI).

Every call signs in, and the server checks the password's hash each time (about 0.2 s here):
the lookups, which do not depend on each other, are made a few at a time; the changes, rare,
one after another.
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

# What MLflow grants a user on an experiment (its RESOURCE_GRANTABLE_PERMISSIONS): DENY keeps
# the user out; NO_PERMISSIONS is no longer granted on an experiment.
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "DENY")
# Lookups in flight at once: enough to keep a server's workers busy, few enough not to queue.
PARALLEL = 4
T = TypeVar("T")
R = TypeVar("R")


def each(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """function applied to every item, a few at a time; the results in the items' order (the
    first error raised, as a plain loop would)."""
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(function, items))


class SetupError(Exception):
    """What stopped the set-up, in one line."""


class Server:
    """MLflow's REST API at url, as one user."""

    def __init__(self, url: str, username: str, password: str, tls: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self.tls = tls
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             query: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) of one call; only a server that cannot be reached raises."""
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.tls) as answer:  # noqa: S310 - the url is MLflow's
                return answer.status, json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                return error.code, json.loads(text)
            except ValueError:
                return error.code, {"message": text.strip()}
        except (urllib.error.URLError, OSError) as error:
            raise SetupError(f"MLflow does not answer at {self.url}: {error}") from None

    def expect(self, method: str, path: str, body: dict[str, Any] | None = None,
               query: dict[str, str] | None = None) -> dict[str, Any]:
        status, answer = self.call(method, path, body, query)
        if status != 200:
            raise SetupError(f"MLflow refused {method} {path} as {self.username}: {status} {message(answer)}")
        return answer


def message(answer: dict[str, Any]) -> str:
    return str(answer.get("message") or answer.get("error_code") or answer)[:300]


def experiment_ids(admin: Server, experiments: list[dict[str, Any]], tag: str, check: bool,
                   changed: list[str]) -> dict[str, str]:
    """Create the missing experiments, and tag each with its artifact store; refuse one that exists
    with another artifact location (MLflow cannot move it). Returns name -> id (a placeholder for
    one to be created in check mode).

    An experiment with a ``store`` has its artifacts behind the server (``mlflow-artifacts:/<id>``,
    MLflow's location when none is given), in the store its ``tag`` names. One with an
    ``artifact_location`` is made there.

    One that an earlier release made at ``earlier_location`` (a direct one) is moved behind the
    server by ``aie.mlflow_db upgrade`` before the server starts (roles/mlflow/tasks/schema.yml),
    which runs whenever the server's container is created or replaced, as on every upgrade. In
    check mode, which replaces no container, it is reported as to be moved. Found by a real run, it
    was put back under a server that was not replaced (by hand, say): it is named, with the way to
    have it moved."""
    found = each(lambda experiment: admin.call("GET", "/api/2.0/mlflow/experiments/get-by-name",
                                               query={"experiment_name": experiment["name"]}), experiments)
    ids: dict[str, str] = {}
    for experiment, (status, answer) in zip(experiments, found, strict=True):
        name, store = experiment["name"], experiment.get("store") or ""
        location = experiment.get("artifact_location") or ""
        if status == 200:
            existing = answer["experiment"]
            ids[name] = existing["experiment_id"]
            accepted = location or f"mlflow-artifacts:/{ids[name]}"
            if store and existing["artifact_location"] == experiment.get("earlier_location") and check:
                changed.append(f"experiment {name}: artifacts through MLflow now (was {existing['artifact_location']})")
                continue
            if store and existing["artifact_location"] == experiment.get("earlier_location"):
                raise SetupError(
                    f"Experiment {name} is at the direct location an earlier release made it at "
                    f"({existing['artifact_location']}): `aie up` moves it behind MLflow before the tracking server "
                    "starts, when its container is created or replaced, which this run did not do. Stop the "
                    "tracking server's container (docker stop) and run `aie up` again: it backs up MLflow's "
                    "database and moves the experiment (its runs keep their artifacts where they are).")
            if existing["artifact_location"] != accepted or existing["lifecycle_stage"] != "active":
                wanted = location or f"the server's proxied artifacts ({store})"
                raise SetupError(
                    f"Experiment {name} already exists with artifact location {existing['artifact_location']} "
                    f"({existing['lifecycle_stage']}); MLflow cannot move it to {wanted}. "
                    "Rename it in mlflow_experiments or restore/rename it in MLflow.")
            tags = {item["key"]: item["value"] for item in existing.get("tags", [])}
            if store and tags.get(tag) != store:
                changed.append(f"experiment {name}: artifacts on {store}")
                if not check:
                    admin.expect("POST", "/api/2.0/mlflow/experiments/set-experiment-tag",
                                 {"experiment_id": ids[name], "key": tag, "value": store})
        elif status == 404:
            changed.append(f"experiment {name} created" + (f", artifacts on {store}" if store else ""))
            body: dict[str, Any] = {"name": name}
            if location:
                body["artifact_location"] = location
            if store:
                body["tags"] = [{"key": tag, "value": store}]
            ids[name] = "" if check else admin.expect("POST", "/api/2.0/mlflow/experiments/create", body)[
                "experiment_id"]
        else:
            raise SetupError(f"MLflow refused to look up experiment {name}: {status} {message(answer)}")
    return ids


def signed_in(admin: Server, wanted: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The account looking itself up with its password: 200 when it exists with that password."""
    name = wanted["username"]
    own = Server(admin.url, name, wanted["password"], admin.tls)
    return own.call("GET", "/api/2.0/mlflow/users/get", query={"username": name})


def account(admin: Server, wanted: dict[str, Any], own: tuple[int, dict[str, Any]], check: bool,
            changed: list[str]) -> bool:
    """Create the account or correct its password and admin flag, given what signed_in answered.
    Returns whether it exists now."""
    name, password, is_admin = wanted["username"], wanted["password"], bool(wanted.get("admin", False))
    status, found = own
    if status != 200:
        # A wrong password and an unknown user both answer 401: the admin tells them apart.
        status, found = admin.call("GET", "/api/2.0/mlflow/users/get", query={"username": name})
        if status == 404:
            changed.append(f"account {name} created")
            if check:
                if is_admin:
                    changed.append(f"account {name} made admin")
                return False
            found = admin.expect("POST", "/api/2.0/mlflow/users/create", {"username": name, "password": password})
        elif status == 200:
            changed.append(f"password of account {name} updated")
            if not check:
                admin.expect("PATCH", "/api/2.0/mlflow/users/update-password", {"username": name, "password": password})
        else:
            raise SetupError(f"MLflow refused to look up account {name}: {status} {message(found)}")
    if bool(found["user"].get("is_admin")) != is_admin:
        changed.append(f"account {name} {'made' if is_admin else 'no longer'} admin")
        if not check:
            admin.expect("PATCH", "/api/2.0/mlflow/users/update-admin", {"username": name, "is_admin": is_admin})
    return True


def permissions(admin: Server, wanted: dict[str, Any], ids: dict[str, str], exists: bool, check: bool,
                changed: list[str]) -> None:
    """Grant the account its permission on each experiment it lists, where it differs."""
    name = wanted["username"]
    listed = sorted(wanted.get("permissions", {}).items())
    for experiment, permission in listed:
        if experiment not in ids:
            raise SetupError(f"mlflow_users: {name} is given {permission} on experiment {experiment}, "
                             "which mlflow_experiments does not list")
        if permission == "NO_PERMISSIONS":
            raise SetupError(f"mlflow_users: {name} is given NO_PERMISSIONS on {experiment}, which MLflow does not "
                             "grant on an experiment: use DENY to keep the user out of it")
        if permission not in PERMISSIONS:
            raise SetupError(f"mlflow_users: {name} is given {permission} on {experiment}; "
                             f"choose one of {', '.join(PERMISSIONS)}")

    def target(experiment: str) -> dict[str, str]:
        return {"username": name, "resource_type": "experiment", "resource_id": ids[experiment]}

    def held(experiment: str) -> str | None:
        if not (exists and ids[experiment]):
            return None
        return str(admin.expect("GET", "/api/3.0/mlflow/users/permissions/get", query=target(experiment))["permission"])

    for (experiment, permission), have in zip(listed, each(held, [e for e, _ in listed]), strict=True):
        if have == permission:
            continue
        changed.append(f"{name} given {permission} on experiment {experiment}")
        if check:
            continue
        # A grant is refused where one exists: the one there (if any) is revoked first.
        status, answer = admin.call("POST", "/api/3.0/mlflow/users/permissions/revoke", target(experiment))
        if status not in (200, 404):
            raise SetupError(f"MLflow refused to revoke {name}'s permission on {experiment}: "
                             f"{status} {message(answer)}")
        admin.expect("POST", "/api/3.0/mlflow/users/permissions/grant",
                     {**target(experiment), "permission": permission})


def retire(admin: Server, names: list[str], check: bool, changed: list[str]) -> None:
    """Delete the retired accounts that exist: the person can no longer sign in (MLflow drops
    their permissions with the account)."""
    for name in names:
        status, found = admin.call("GET", "/api/2.0/mlflow/users/get", query={"username": name})
        if status == 404:
            continue
        if status != 200:
            raise SetupError(f"MLflow refused to look up account {name}: {status} {message(found)}")
        changed.append(f"account {name} deleted")
        if not check:
            admin.expect("DELETE", "/api/2.0/mlflow/users/delete", {"username": name})


def setup(settings: dict[str, Any]) -> list[str]:
    check = bool(settings.get("check", False))
    tls = ssl.create_default_context(cafile=settings["ca_file"]) if settings.get("ca_file") else None
    admin = Server(settings["url"], settings["admin"]["username"], settings["admin"]["password"], tls)
    status, answer = admin.call("GET", "/api/2.0/mlflow/users/get", query={"username": admin.username})
    if status != 200 or not answer["user"].get("is_admin"):
        raise SetupError(
            f"MLflow does not accept the admin account {admin.username} with the configured password "
            f"({status} {message(answer)}): the server keeps the password it was first given. "
            "Set aie_mlflow_admin_password to it, or see the README on rotating it.")
    accounts = settings.get("accounts", [])
    retired = settings.get("retired", [])
    in_use = sorted(set(retired) & ({wanted["username"] for wanted in accounts} | {admin.username}))
    if in_use:
        raise SetupError(f"account {in_use[0]} is both retired and in use: it is not deleted")
    changed: list[str] = []
    ids = experiment_ids(admin, settings.get("experiments", []), settings.get("store_tag", ""), check, changed)
    for wanted, own in zip(accounts, each(lambda wanted: signed_in(admin, wanted), accounts), strict=True):
        exists = account(admin, wanted, own, check, changed)
        permissions(admin, wanted, ids, exists, check, changed)
    retire(admin, retired, check, changed)
    return changed


def main() -> int:
    try:
        settings = json.loads(sys.stdin.read())
    except ValueError as error:
        print(f"the settings on stdin are not JSON: {error}", file=sys.stderr)
        return 1
    try:
        changed = setup(settings)
    except SetupError as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps({"changed": changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
