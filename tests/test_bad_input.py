"""Bad input stops the run before anything changes, with a message naming the culprit."""

from __future__ import annotations

import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conftest import (
    BIN,
    PROJECT,
    aie,
    ansible_playbook,
    behind_a_context,
    containers,
    docker_answers,
    run,
    write_local_inventory,
    write_vars,
)

PREFIX = "aiebad"


STATE = Path.home() / ".local" / "share" / "aie" / PREFIX


@pytest.fixture(scope="module", autouse=True)
def nothing_left_of_an_earlier_run() -> None:
    """What an interrupted earlier run of these tests may have left (containers, the S3
    volume of `minio_store`, the state folder of a deployment that got past validation) would make a
    refusal take another branch, or a check of "nothing changed" fail: removed first."""
    if docker_answers():
        for name in containers(PREFIX):
            run(["docker", "rm", "-f", name], timeout=120)
        run(["docker", "volume", "rm", "-f", f"{PREFIX}-minio-data"], timeout=60)
    shutil.rmtree(STATE, ignore_errors=True)


def deploy(tmp_path: Path, inventory: str = "inventory/local", **settings: object) -> str:
    base = {"aie_name_prefix": PREFIX, "aie_keys_dir": str(tmp_path / "keys")}
    extra = write_vars(tmp_path / "vars.json", {**base, **settings})
    result = ansible_playbook("-i", inventory, "site.yml", "-e", extra)
    assert result.returncode != 0, result.stdout[-2000:]
    # Nothing was deployed: no service image looked at or built, no container, no state folder
    # on the host, no keys.
    assert "Look for the image and the images it is built from" not in result.stdout
    assert containers(PREFIX) == []
    assert not STATE.exists()
    assert not (tmp_path / "keys" / "sftp_client_ed25519").exists()
    return result.stdout + result.stderr


@contextmanager
def held_port() -> Iterator[int]:
    """A loopback port another program listens on, for as long as the block runs."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.parametrize(
    "variable", ["aie_s3_access_key", "aie_s3_secret_key", "aie_jupyterlab_token", "aie_backup_password",
                 "aie_mlflow_admin_password"]
)
def test_empty_credentials_are_refused(tmp_path: Path, variable: str) -> None:
    output = deploy(tmp_path, **{variable: ""})
    assert f"{variable} is empty" in output


@pytest.mark.parametrize(("variable", "value"), [("aie_s3_secret_key", "minioadmin"), ("aie_s3_secret_key", "changeme"),
                                                  ("aie_mlflow_admin_password", "password1234")])
def test_well_known_credentials_are_refused(tmp_path: Path, variable: str, value: str) -> None:
    output = deploy(tmp_path, **{variable: value})
    assert f"{variable} is empty, shorter than 16 characters or a well-known default" in output


@pytest.mark.parametrize("user", [
    {"name": "alice", "password": "short-one"},
    {"name": "alice", "password": "password1234"},
    {"name": "serving"},
    {"name": "alice", "permissions": {"no-such-experiment": "EDIT"}},
    {"name": "alice", "permissions": {"notebooks-s3": "WRITE"}},
], ids=["short password", "well-known password", "name of a client account", "unknown experiment",
        "unknown permission"])
def test_a_bad_mlflow_user_is_refused(tmp_path: Path, user: dict[str, object]) -> None:
    output = deploy(tmp_path, mlflow_users=[user])
    assert "mlflow_users: each user needs a unique name other than admin, jupyterlab, serving" in output
    assert "short-one" not in output


def test_no_permissions_is_refused_with_a_line_that_names_deny(tmp_path: Path) -> None:
    output = deploy(tmp_path, mlflow_users=[{"name": "alice", "permissions": {"notebooks-s3": "NO_PERMISSIONS"}}])
    assert "mlflow_users: alice given NO_PERMISSIONS" in output and "use DENY to keep a user out" in output


@pytest.mark.parametrize(("user", "settings", "shown"), [
    ({"name": "Alice_B", "jupyterhub": True}, {}, "the names of Alice_B in mlflow_users (with jupyterhub: true)"),
    ({"name": "alice", "jupyterhub": True}, {"jupyterhub_server_memory": "lots"}, "lots"),
    ({"name": "alice", "jupyterhub": True}, {"jupyterhub_server_cpus": 0}, "jupyterhub_server_cpus above 0"),
    ({"name": "alice", "jupyterhub": True}, {"aie_jupyterhub_crypt_key": "0123456789abcdef"}, "64 hex digits"),
], ids=["a name a container cannot have", "a memory limit", "no CPU", "a short crypt key"])
def test_bad_jupyterhub_settings_are_refused(tmp_path: Path, user: dict[str, object], settings: dict[str, object],
                                             shown: str) -> None:
    output = deploy(tmp_path, mlflow_users=[user], **settings)
    assert "JupyterHub: " in output and shown in output
    assert "0123456789abcdef" not in output


@pytest.mark.parametrize(("variable", "value"), [("aie_container_log_max_size", "ten megabytes"),
                                                 ("aie_container_log_max_files", 0),
                                                 ("aie_container_pids_limit", 10)])
def test_bad_log_and_process_limits_are_refused(tmp_path: Path, variable: str, value: object) -> None:
    output = deploy(tmp_path, **{variable: value})
    assert "aie_container_log_max_size is a size with k, m or g (10m)" in output and str(value) in output


def test_client_keys_equal_to_the_servers_are_refused(tmp_path: Path) -> None:
    output = deploy(tmp_path, aie_s3_access_key="AIETESTSAMEKEY000001", aie_s3_client_access_key="AIETESTSAMEKEY000001")
    assert "aie_s3_client_access_key is aie_s3_access_key" in output


def test_reader_keys_equal_to_the_clients_are_refused(tmp_path: Path) -> None:
    output = deploy(tmp_path, aie_s3_client_access_key="AIETESTSAMEKEY000002",
                    aie_s3_reader_access_key="AIETESTSAMEKEY000002")
    assert "aie_s3_reader_access_key is aie_s3_client_access_key: the read-only S3 account" in output


def test_unknown_engine_is_refused(tmp_path: Path) -> None:
    output = deploy(tmp_path, s3_engine="ceph")
    assert "s3_engine" in output and "ceph" in output


def test_an_engine_whose_image_cannot_be_had_is_refused_at_once(tmp_path: Path, docker_engine: None) -> None:
    engines = {"minio": {"image": "registry.invalid/aie/no-such-s3:1", "build": False, "command": [], "env": {},
                         "data": "/data", "client_account": "mc", "ceph": False}}
    started = time.perf_counter()
    output = deploy(tmp_path, s3_engine="minio", s3_engines=engines)
    print(f"refused in {time.perf_counter() - started:.1f} s")
    assert "s3_engine=minio: the image registry.invalid/aie/no-such-s3:1 is not here and cannot be pulled" in output
    assert "set s3_engine: rgw" in output


@pytest.fixture
def minio_store(docker_engine: None) -> Iterator[str]:
    """The S3 data volume of a store made while MinIO was the default engine (its label records
    minio), removed afterwards."""
    volume = f"{PREFIX}-minio-data"
    made = run(["docker", "volume", "create", "--label", "aie.s3-engine=minio", volume], timeout=60)
    assert made.returncode == 0, made.stderr
    try:
        yield volume
    finally:
        run(["docker", "volume", "rm", "-f", volume], timeout=60)


def test_a_minio_store_keeps_minio_when_no_engine_is_named(tmp_path: Path, minio_store: str) -> None:
    # MinIO's image, as a machine with no registry has it: not here and not to be pulled. The run
    # chooses MinIO for the store (and so stops at its image), says why, and changes nothing.
    engines = yaml.safe_load((PROJECT / "roles/s3/defaults/main.yml").read_text())["s3_builtin_engines"]
    engines["minio"]["image"] = "registry.invalid/aie/minio:1"
    extra = write_vars(tmp_path / "vars.json", {"aie_name_prefix": PREFIX, "aie_keys_dir": str(tmp_path / "keys"),
                                                "s3_engines": engines})
    result = aie("up", "-e", extra, timeout=600)
    assert result.returncode != 0, result.stdout[-2000:]
    notes = [line for line in result.stderr.splitlines() if line.startswith("aie: note (localhost): ")]
    assert len(notes) == 1, result.stderr[-2000:]
    assert (f"s3_engine is not set, and the S3 volume {minio_store} holds the data of s3_engine=minio: it keeps "
            "running minio (the default engine of new stores is rgw)") in notes[0]
    last = result.stderr.strip().splitlines()[-1]
    assert "s3_engine=minio: the image registry.invalid/aie/minio:1 is not here and cannot be pulled" in last
    assert f"the S3 volume {minio_store} holds its data" in last and "set s3_engine: rgw" not in last
    assert containers(PREFIX) == []
    assert not (tmp_path / "keys" / "sftp_client_ed25519").exists()


def test_a_minio_store_refuses_the_rgw_engine_by_name(tmp_path: Path, minio_store: str) -> None:
    output = deploy(tmp_path, s3_engine="rgw")
    assert (f"The S3 volume {minio_store} holds the data of s3_engine=minio, not of s3_engine=rgw: "
            "set s3_engine: minio in your inventory") in output
    assert "keeps running" not in output


def test_an_engine_that_does_not_answer_is_named_by_its_socket(tmp_path: Path, docker_engine: None) -> None:
    # As on a Mac whose Docker Desktop does not offer /var/run/docker.sock, with no context that
    # names its socket: Docker cannot be installed here (docker_engine_install false, as on macOS).
    prefix, env = behind_a_context(tmp_path, context=False)
    extra = write_vars(tmp_path / "vars.json", {"aie_name_prefix": PREFIX, "aie_keys_dir": str(tmp_path / "keys"),
                                                "docker_engine_install": False})
    result = run([*prefix, sys.executable, "-m", "aie.cli", "up", "-e", extra], timeout=600, extra_env=env)
    assert result.returncode != 0, result.stdout[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "No Docker engine answers at unix:///var/run/docker.sock on localhost. Start Docker" in last
    assert "Allow the default Docker socket to be used" in last
    assert not (tmp_path / "keys" / "sftp_client_ed25519").exists()


def test_a_bad_memory_limit_is_refused(tmp_path: Path) -> None:
    output = deploy(tmp_path, aie_service_overrides={"jupyterlab": {"memory": "8 GB"}})
    assert "The memory limit of jupyterlab is not a number with b, k, m or g" in output


def test_a_bad_memory_limit_in_a_deprecated_setting_is_refused(tmp_path: Path) -> None:
    # aie_jupyterlab_memory is still read, where no override sets JupyterLab's memory.
    inventory = write_local_inventory(tmp_path / "inventory.yml", ("mlflow", "sftp", "s3", "jupyterlab"))
    output = deploy(tmp_path, str(inventory), aie_jupyterlab_memory="8 GB", aie_mlflow_backend="sqlite")
    assert "The memory limit of jupyterlab is not a number with b, k, m or g" in output


def test_overrides_of_services_and_fields_that_do_not_exist_are_refused(tmp_path: Path) -> None:
    output = " ".join(deploy(tmp_path, aie_service_overrides={"jupyter": {"memory": "4g"},
                                                              "mlflow": {"mem": "4g", "memory": "4g"},
                                                              "sftp": "4g"}).split())
    assert "aie_service_overrides of localhost: no service jupyter (the services: mlflow, sftp, s3," in output
    assert "; mlflow: no field mem (its fields: group, container, image, artifacts, one_offs, secrets, port," in output
    assert "; sftp: not a dictionary of fields but '4g'." in output


def test_memory_limits_beyond_the_engines_memory_are_refused(tmp_path: Path, docker_engine: None) -> None:
    # A JupyterLab limit of 1 TiB: more than this engine has, as 8g of 16.5 GiB was on an 8 GiB VM.
    engine = int(run(["docker", "info", "--format", "{{.MemTotal}}"], timeout=60).stdout)
    output = " ".join(deploy(tmp_path, aie_service_overrides={"jupyterlab": {"memory": "1024g"}}).split())
    assert "The memory limits of the containers on localhost add up to" in output
    assert "jupyterlab 1024g" in output and "mlflow " in output and "backup " in output
    assert f"more than the {round(engine / 2**30, 1)} GiB of memory its Docker engine has" in output


def test_two_services_on_one_port_are_refused(tmp_path: Path) -> None:
    # Serving's port on MLflow's: the message names the two settings, and only them.
    output = " ".join(deploy(tmp_path, aie_serving_port=5500).split())
    assert ("would publish port(s) 5500 for more than one service: "
            "set distinct ports in aie_mlflow_port, aie_serving_port.") in output


def test_a_port_another_program_holds_is_refused_at_once(tmp_path: Path) -> None:
    # Another program listens where MLflow would be published: nothing is built or started.
    with held_port() as port:
        started = time.perf_counter()
        output = deploy(tmp_path, aie_mlflow_port=port)
        print(f"refused in {time.perf_counter() - started:.1f} s")
    assert (f"Port {port} on localhost is in use by another program: mlflow cannot publish it. "
            "Stop that program, or set aie_mlflow_port to a free port.") in output


def test_a_setting_in_the_inventorys_group_vars_all_is_used(tmp_path: Path) -> None:
    # The project's group_vars/all holds defaults: an inventory's group_vars/all overrides them.
    inventory = tmp_path / "inventory"
    shutil.copytree(PROJECT / "inventory" / "local", inventory)
    with held_port() as port:
        (inventory / "group_vars" / "all.yml").write_text(f"aie_mlflow_port: {port}\n")
        output = deploy(tmp_path, inventory=str(inventory))
    assert f"Port {port} on localhost is in use by another program: mlflow" in output


def test_a_missing_group_is_named(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  children:\n    aie:\n      children:\n"
        + "".join(f"        {g}:\n          hosts:\n            localhost:\n" for g in ("mlflow", "sftp", "jupyterlab"))
        + "  hosts:\n    localhost:\n      ansible_connection: local\n"
    )
    output = deploy(tmp_path, inventory=str(inventory))
    assert "no host in group(s) s3" in output


def test_an_s3_server_in_both_the_s3_and_the_old_minio_group_is_refused(tmp_path: Path) -> None:
    # minio, the s3 group's name before, is still read as s3: an inventory with both is ambiguous.
    inventory = write_local_inventory(tmp_path / "inventory.yml", ("mlflow", "sftp", "s3", "minio", "jupyterlab"))
    output = " ".join(deploy(tmp_path, inventory=str(inventory)).split())
    assert ("The inventory has hosts in both the s3 group (localhost) and the minio group (localhost), the name of "
            "the s3 group before: rename minio to s3.") in output


def test_a_bad_experiment_list_is_refused(tmp_path: Path) -> None:
    output = deploy(tmp_path, mlflow_experiments=[{"name": "x"}])
    assert "mlflow_experiments" in output


@pytest.mark.parametrize("schedule", ["every day", "17 3 * *"])
def test_a_bad_backup_schedule_is_refused(tmp_path: Path, schedule: str) -> None:
    output = deploy(tmp_path, aie_backup_schedule=schedule)
    assert "aie_backup_schedule and aie_backup_prune_schedule must be five cron fields" in output and schedule in output


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [("", 'aie_s3_endpoint="":'), ("s3.example.org", 'aie_s3_endpoint="s3.example.org":'),
     ("ftp://s3.example.org", 'aie_s3_endpoint="ftp://s3.example.org":')],
)
def test_external_engine_needs_an_http_endpoint(tmp_path: Path, endpoint: str, shown: str) -> None:
    output = deploy(tmp_path, s3_engine="external", aie_s3_endpoint=endpoint)
    assert shown in output and "s3_engine: external needs the URL of your S3 service" in output


@pytest.mark.parametrize("bundle", ["{tmp}/no-such-ca.pem", "ca.pem", "{tmp}/not-a-certificate.pem"])
def test_external_engine_refuses_a_missing_ca_bundle(tmp_path: Path, bundle: str) -> None:
    (tmp_path / "not-a-certificate.pem").write_text("not a certificate\n")
    path = bundle.format(tmp=tmp_path)
    output = deploy(tmp_path, s3_engine="external", aie_s3_endpoint="https://s3.example.org", aie_s3_ca_bundle=path)
    assert f"aie_s3_ca_bundle={path}: no PEM certificate file at this path" in output


def test_a_host_without_room_for_the_images_is_refused(tmp_path: Path, docker_engine: None) -> None:
    output = deploy(tmp_path, aie_disk_gib_first_build=1_000_000, aie_disk_gib_always=1_000_000)
    assert "localhost has " in output and " GiB free in Docker's data root" in output
    assert "1000000 GiB are needed" in output


@pytest.mark.parametrize("settings", [
    {"aie_tls_certificate": "{tmp}/no-such-certificate.pem", "aie_tls_private_key": "{tmp}/no-such-key.pem"},
    {"aie_tls_certificate": "{tmp}/own.pem"},
    {"aie_tls_days": 20, "aie_tls_renew_days": 30},
], ids=["missing files", "certificate without its key", "renewal after expiry"])
def test_bad_https_settings_are_refused(tmp_path: Path, settings: dict[str, object]) -> None:
    (tmp_path / "own.pem").write_text("a certificate of the user's own\n")
    output = deploy(tmp_path, **{name: str(value).format(tmp=tmp_path) if isinstance(value, str) else value
                                 for name, value in settings.items()})
    assert "HTTPS settings of localhost" in output
    assert all(str(value).format(tmp=tmp_path) in output for value in settings.values())


@pytest.mark.parametrize("password", ["", "short-one", "password1234"], ids=["empty", "short", "well-known"])
def test_a_weak_database_password_is_refused(tmp_path: Path, password: str) -> None:
    output = deploy(tmp_path, aie_mlflow_backend="postgresql", aie_database_mlflow_password=password)
    assert "aie_database_accounts: the password of tracking is empty, shorter than 16 characters" in output
    assert "short-one" not in output


@pytest.mark.parametrize(("settings", "shown"), [
    ({"aie_mlflow_backend": "mysql"}, "aie_mlflow_backend must be one of: sqlite, postgresql, external, got: mysql"),
    ({"aie_mlflow_backend": "external"}, "external needs aie_database_external.host"),
    ({"aie_mlflow_backend": "postgresql", "aie_database_accounts": {
        "tracking": {"database": "mlflow", "user": "mlflow", "password": "Abcdefghijklmnopqrstuvwxyz1234"},
        "auth": {"database": "mlflow", "user": "mlflow_auth", "password": "Zyxwvutsrqponmlkjihgfedcba4321"}}},
     "the tracking and auth databases need distinct database and user names"),
    ({"aie_mlflow_backend": "postgresql", "aie_mlflow_move": True},
     "Nothing to move to PostgreSQL: MLflow runs on no SQLite store here."),
    ({"aie_mlflow_version": "3.17"}, "aie_mlflow_version=3.17: not a release number X.Y.Z"),
    # MLflow would read an overflow of 0 as its default (10).
    ({"mlflow_db_max_overflow": 0}, "mlflow_db_max_overflow are whole numbers, 1 or more (got 2, 40, 0)"),
], ids=["unknown backend", "external without a host", "one database for both stores", "a move with nothing to move",
        "a malformed MLflow release", "no overflow connection"])
def test_a_bad_database_setting_is_refused(tmp_path: Path, settings: dict[str, object], shown: str) -> None:
    output = deploy(tmp_path, **settings)
    assert shown in output
    assert "Abcdefghijklmnopqrstuvwxyz1234" not in output


def test_the_service_role_refuses_to_run_without_the_hosts_state(tmp_path: Path) -> None:
    # A play that deploys a service without importing playbooks/discover.yml would treat every
    # container as new and every MLflow database as unknown: the service role stops it, naming
    # what to import, before it touches anything.
    playbook = tmp_path / "deploy.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Deploy MLflow without reading the hosts' state", "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "Run the container",
                   "ansible.builtin.include_role": {"name": "service", "tasks_from": "container"},
                   "vars": {"service_name": "mlflow", "service_image": "aie/mlflow"}}],
    }]))
    # Beside the project's settings, as any playbook of a deployment is.
    (tmp_path / "group_vars").symlink_to(PROJECT / "group_vars")
    result = run([str(BIN / "ansible-playbook"), str(playbook)], timeout=120,
                 extra_env={"ANSIBLE_ROLES_PATH": str(PROJECT / "roles"),
                            "ANSIBLE_FILTER_PLUGINS": str(PROJECT / "filter_plugins")})
    assert result.returncode == 2, result.stdout[-2000:]
    refusal = "localhost has no aie_host_state: the service role (mlflow) runs after playbooks/discover.yml"
    assert refusal in result.stdout
    assert "changed=0" in result.stdout
