"""Static checks: the same ones a reviewer runs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import BIN, PROJECT, run

pytestmark = pytest.mark.lint


@pytest.mark.parametrize(
    "command",
    [
        [str(BIN / "ansible-lint"), "--nocolor"],
        [str(BIN / "yamllint"), "--strict", "."],
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "mypy")],
        [str(BIN / "ansible-playbook"), "-i", "inventory/local", "site.yml", "--syntax-check"],
        [str(BIN / "ansible-playbook"), "-i", "inventory/multi-host", "site.yml", "--syntax-check"],
    ],
    ids=["ansible-lint", "yamllint", "ruff", "mypy", "syntax-local", "syntax-multi-host"],
)
def test_static_check_passes(command: list[str]) -> None:
    result = run(command, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]


# The modules whose result holds a container's whole configuration (its environment, command
# and mounts): `ansible-playbook -v` would print it.
CONFIGURATION_MODULES = {"community.docker.docker_container", "community.docker.docker_container_info"}


def tasks_of(node: object) -> Iterator[dict[str, Any]]:
    """Every task of a task file or playbook, blocks and their rescue and always included."""
    if isinstance(node, list):
        for item in node:
            yield from tasks_of(item)
    elif isinstance(node, dict):
        if any(key in node for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always")):
            if "block" in node:
                yield node
            for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
                yield from tasks_of(node.get(key) or [])
        else:
            yield node


def test_every_task_that_returns_a_containers_configuration_is_no_log() -> None:
    exposed = []
    for path in sorted([*PROJECT.glob("roles/*/tasks/*.yml"), *PROJECT.glob("playbooks/*.yml"),
                        *PROJECT.glob("roles/*/handlers/*.yml")]):
        for task in tasks_of(yaml.safe_load(path.read_text()) or []):
            hidden = task.get("no_log") is True
            if CONFIGURATION_MODULES & set(task) and not hidden:
                exposed.append(f"{path.relative_to(PROJECT)}: {task.get('name')}")
    assert exposed == []


def written_in(pattern: str, folders: tuple[str, ...], leave_out: tuple[str, ...] = ()) -> list[str]:
    """Where (file:line) the project's YAML files under `folders`, but for those whose path
    relative to the project ends with one of `leave_out`, match `pattern` outside comments."""
    found = re.compile(pattern)
    return [f"{path.relative_to(PROJECT)}:{number}" for folder in folders
            for path in sorted((PROJECT / folder).rglob("*.yml"))
            if not str(path.relative_to(PROJECT)).endswith(leave_out)
            for number, line in enumerate(path.read_text().splitlines(), 1) if found.search(line.split("#")[0])]


def settings_defaults() -> dict[str, Any]:
    """The values every play gets when the inventory sets nothing: group_vars/all."""
    values: dict[str, Any] = {}
    for path in sorted(PROJECT.glob("group_vars/all/*.yml")):
        values.update(yaml.safe_load(path.read_text()) or {})
    return values


def test_every_default_an_argument_spec_documents_is_the_one_the_role_gets() -> None:
    # Ansible reads a role's defaults from defaults/main.yml (or group_vars/all, for the shared
    # aie_* settings); the `default` in meta/argument_specs.yml only documents it, and ansible-doc
    # shows it. Where both are written, they must agree.
    shared, differing = settings_defaults(), []
    for spec in sorted(PROJECT.glob("roles/*/meta/argument_specs.yml")):
        role = spec.parent.parent
        defaults_file = role / "defaults/main.yml"
        defaults = (yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else None) or {}
        for entry, body in yaml.safe_load(spec.read_text())["argument_specs"].items():
            for name, option in (body.get("options") or {}).items():
                if "default" not in option:
                    continue
                actual = defaults.get(name, shared.get(name, "(none: neither defaults/main.yml nor group_vars/all)"))
                # A setting renamed in this release reads its old name first: its default is the fallback.
                alias = re.fullmatch(r"\{\{ minio_\w+ \| default\((.*)\) \}\}", str(actual))
                actual = yaml.safe_load(alias.group(1)) if alias else actual
                if actual != option["default"]:
                    differing.append(f"{role.name} {entry} {name}: documents {option['default']!r}, gets {actual!r}")
    assert differing == []


def test_the_multi_host_example_shows_every_port_setting_with_its_default() -> None:
    settings = yaml.safe_load((PROJECT / "group_vars/all/services.yml").read_text())
    example = (PROJECT / "inventory/multi-host/group_vars/aie.yml").read_text()
    shown = yaml.safe_load("\n".join(line[2:] for line in example.splitlines()
                                     if line.startswith("# aie_") and "_port:" in line))
    ports = [service["port_setting"] for service in settings["aie_service_definitions"].values()]
    assert shown == {name: settings[name] for name in ports}


def test_the_readme_names_one_setting_for_each_common_change() -> None:
    # A port, the S3 engine, the backup schedule: one setting each, named in the README's table.
    settings = yaml.safe_load((PROJECT / "group_vars/all/services.yml").read_text())
    ports = {service["port_setting"] for service in settings["aie_service_definitions"].values()}
    rows = {line.split("|")[1].strip(): set(re.findall(r"`([a-z0-9_]+)`", line.split("|")[2]))
            for line in (PROJECT / "README.md").read_text().splitlines()
            if line.startswith("| ") and line.count("|") == 3}
    assert {name for name in rows["a service's published port"] if name.endswith("_port")} == ports
    assert "s3_engine" in rows["the S3 engine"]
    assert "aie_backup_schedule" in rows["the backup schedule"]
    defaults = {**yaml.safe_load((PROJECT / "group_vars/all/backup.yml").read_text()),
                **yaml.safe_load((PROJECT / "roles/s3/defaults/main.yml").read_text())}
    assert {"aie_backup_schedule", "s3_engine"} <= set(defaults)


def test_the_readme_lists_every_data_volume() -> None:
    services = (PROJECT / "group_vars/all/services.yml").read_text()
    volumes = {f"aie-{name}" for line in services.splitlines() if line.strip().startswith("volumes:")
               for name in re.findall(r"[a-z]+-data", line)}
    readme = " ".join((PROJECT / "README.md").read_text().split())
    listed = re.search(r"Data volumes \(([^)]*)\)", readme)
    assert listed and volumes and set(re.findall(r"`([a-z-]+)`", listed.group(1))) == volumes


# What confines a service's container (roles/service/tasks/run.yml).
CONFINEMENT = ("user", "cap_drop", "security_opts", "memory", "read_only", "tmpfs", "pids_limit", "log_driver",
               "log_options")


def test_every_container_of_a_service_image_is_created_by_one_task() -> None:
    # The service's own container and its one-off containers (MLflow's schema and admin steps) are
    # all created by roles/service/tasks/run.yml, so none is confined less than the service; no
    # other role reads the service role's private variables to make one of its own.
    containers = {(str(path.relative_to(PROJECT)), task["name"])
                  for path in sorted(PROJECT.glob("roles/*/tasks/*.yml"))
                  for task in tasks_of(yaml.safe_load(path.read_text()) or [])
                  if "{{ __service_user" in str(task.get("community.docker.docker_container", {}).get("user"))}
    assert containers == {("roles/service/tasks/run.yml", "Run {{ __service_run.title }}")}
    private = [f"{path.relative_to(PROJECT)}:{number}" for path in sorted(PROJECT.glob("roles/*/**/*"))
               if path.is_file() and path.suffix in (".yml", ".j2")
               and not path.is_relative_to(PROJECT / "roles/service")
               for number, line in enumerate(path.read_text().splitlines(), 1) if "__service_" in line]
    assert private == []
    run = next(task for task in tasks_of(yaml.safe_load((PROJECT / "roles/service/tasks/run.yml").read_text()))
               if "community.docker.docker_container" in task)["community.docker.docker_container"]
    assert set(CONFINEMENT) <= set(run)


def test_artifact_clients_are_wired_from_the_registry_only() -> None:
    # aie_services' `artifacts` makes a service an artifact client: the service role gives it its
    # account's files, secrets and environment, and the keys role its SFTP key. No service role
    # hands them over itself, and no list of client groups is kept beside the registry.
    wired = [f"{path.relative_to(PROJECT)}:{number}" for path in sorted(PROJECT.glob("roles/*/tasks/*.yml"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"aie_artifact_(files|secret_files|client_env)", line.split("#")[0])]
    assert wired == []
    keys = yaml.safe_load((PROJECT / "roles/keys/defaults/main.yml").read_text())
    assert all("aie_services" in keys[name] for name in ("keys_sftp_client_groups", "keys_sftp_reader_groups"))
    services = yaml.safe_load((PROJECT / "group_vars/all/services.yml").read_text())["aie_service_definitions"]
    assert {name: service["artifacts"] for name, service in services.items() if "artifacts" in service} == {
        "mlflow": "client", "jupyterlab": "client", "serving": "reader"}


def test_containers_of_releases_before_are_taken_over_by_the_service_role_only() -> None:
    # aie_services' `former_containers`: the service role removes them, and their config volumes,
    # before it starts the container that takes over their volumes; no other role does.
    removing = [f"{path.relative_to(PROJECT)}: {task['name']}" for path in sorted(PROJECT.glob("roles/*/tasks/*.yml"))
                if not path.is_relative_to(PROJECT / "roles/service")
                for task in yaml.safe_load(path.read_text()) or []
                for module in ("community.docker.docker_container", "community.docker.docker_volume")
                if task.get(module, {}).get("state") == "absent" and "former" in yaml.safe_dump(task)]
    assert removing == []
    container = (PROJECT / "roles/service/tasks/container.yml").read_text()
    steps = [f"include_tasks: {name}" for name in ("former.yml", "prepare.yml", "run.yml")]
    assert sorted(steps, key=container.index) == steps


def test_containers_and_volumes_are_named_in_the_registry_only() -> None:
    # Every container is a `container` of aie_services or of the backup agent's
    # aie_backup_containers; no other setting holds one, and no role, playbook or scenario writes
    # a container's or a volume's name again (<prefix>-<name>).
    settings = settings_defaults()
    registries = ("aie_service_definitions", "aie_backup_containers")
    named = sorted(name for name, value in settings.items()
                   if name not in registries and re.search(r"aie_name_prefix\s*}}-", yaml.safe_dump(value)))
    assert named == []
    assert written_in(r"aie_name_prefix\s*(}}|~\s*')-[a-z]", ("roles", "playbooks", "molecule", "inventory")) == []
    service_vars = yaml.safe_load((PROJECT / "roles/service/vars/main.yml").read_text())
    assert "aie_backup_containers[service_name]" in service_vars["__service_def"]


def test_the_host_that_makes_an_external_s3_services_buckets_is_chosen_once() -> None:
    # With s3_engine: external the s3 group may have no host: the bucket tasks and the check run
    # from the controller with the first MLflow host's settings, a rule written once
    # (aie_s3_admin_here) and used by both playbooks.
    written = written_in(r"mlflow\[0\]|groups\[.mlflow.\]\s*\|\s*first", ("group_vars", "playbooks", "roles"))
    assert [place.split(":")[0] for place in written] == ["group_vars/all/storage.yml"]
    assert all("aie_s3_admin_here" in (PROJECT / "playbooks" / name).read_text() for name in ("s3.yml", "s3_check.yml"))


def test_the_config_folder_in_the_containers_is_named_once() -> None:
    # Where a container finds its config folder and its TLS files is aie_config_mount and
    # aie_config_tls (group_vars/all/paths.yml): no role, setting or scenario writes the path
    # again. The images' scripts read the same folder: they may name it, as that setting says.
    paths = yaml.safe_load((PROJECT / "group_vars/all/paths.yml").read_text())
    mount = paths["aie_config_mount"]
    assert written_in(r"/etc/aie|\btls/(cert|key|ca)\.pem", ("roles", "group_vars", "playbooks", "molecule"),
                      ("group_vars/all/paths.yml", "meta/argument_specs.yml")) == []
    scripts = [path for path in PROJECT.glob("roles/*/docker*/**/*")
               if path.is_file() and "/etc/aie" in path.read_text()]
    assert scripts
    for script in scripts:
        named = set(re.findall(r"/etc/aie[a-z.]*", script.read_text()))
        assert named <= {mount, mount + ".host"}, (script, named)


def test_every_credential_is_checked_before_anything_changes() -> None:
    # Each credential of group_vars/all/secrets.yml is in the `secrets` of a service of
    # aie_services or of the backup agent, which validate.yml checks (empty, short, well known),
    # or one of the database's accounts, which the database role's validation checks.
    settings = settings_defaults()
    entries = [*settings["aie_service_definitions"].values(), *settings["aie_backup_containers"].values()]
    listed = {name for entry in entries for name in entry.get("secrets", [])}
    accounts = yaml.safe_dump(settings["aie_database_accounts"])
    secrets = yaml.safe_load((PROJECT / "group_vars/all/secrets.yml").read_text())
    credentials = {name for name, value in secrets.items() if "ansible.builtin.password" in str(value)}
    unchecked = sorted(name for name in credentials - listed if name not in accounts)
    assert unchecked == []
    assert listed <= set(secrets)
    validate = (PROJECT / "playbooks/validate.yml").read_text()
    assert "map(attribute='secrets'" in validate
    assert not re.search(r"^\s+- aie_\w+_(key|password|token)$", validate, re.M)


def test_each_service_is_deployed_where_the_registry_says_by_one_play() -> None:
    # playbooks/service.yml deploys any service of aie_services on the hosts its `group` names;
    # each service's playbook imports it, and services.yml imports those, each service once.
    services = yaml.safe_load((PROJECT / "group_vars/all/services.yml").read_text())["aie_service_definitions"]
    generic = yaml.safe_load((PROJECT / "playbooks/service.yml").read_text())
    assert [play["hosts"] for play in generic] == ["aie"]
    deployed = []
    for entry in yaml.safe_load((PROJECT / "playbooks/services.yml").read_text()):
        for play in yaml.safe_load((PROJECT / "playbooks" / entry["ansible.builtin.import_playbook"]).read_text()):
            if play.get("ansible.builtin.import_playbook") == "service.yml":
                deployed.append(play["vars"]["aie_deploy"])
            elif "hosts" in play:
                # Only plays that are not a service's own deployment name groups of their own.
                assert not set(re.split(r"[:,]", play["hosts"])) & {"sftp", "s3", "minio", "database", "jupyterlab",
                                                                    "serving"}, play["name"]
    # The backup server is deployed with the prerequisites (playbooks/setup.yml), before the services.
    assert sorted(deployed) == sorted(set(services) - {"backup_server"})


def test_each_image_is_named_once() -> None:
    # A service's image is its `image` in aie_services (the backup agent's: aie_backup_image), an
    # S3 engine's is in s3_engines, the shared ones in group_vars/all/images.yml: no role,
    # playbook or scenario names one again.
    homes = ("group_vars/all/services.yml", "group_vars/all/backup.yml", "group_vars/all/images.yml",
             "roles/s3/defaults/main.yml")
    assert written_in(r"\baie/(mlflow|sftp|database|jupyterlab|backup|backup-server|rgw|ml|python|common):",
                      ("roles", "playbooks", "molecule", "group_vars", "inventory"), homes) == []
    settings = settings_defaults()
    services = settings["aie_service_definitions"]
    assert all("image" in entry for name, entry in services.items() if name != "s3")
    assert all(entry["image"] == "{{ aie_backup_image }}" for entry in settings["aie_backup_containers"].values())


def test_data_volumes_are_named_in_the_registry_only() -> None:
    # A service's data volumes are its `volumes` in aie_services; the roles mount them where their
    # image keeps its data, and never write a volume's name again (their documentation may, as
    # the scenarios' expected output does).
    services = yaml.safe_load((PROJECT / "group_vars/all/services.yml").read_text())["aie_service_definitions"]
    names = {"mlflow-data", "sftp-data", "minio-data", "database-data", "backup-repository"}
    assert names >= {name for service in services.values() if isinstance(service["volumes"], list)
                     for name in service["volumes"]}
    assert written_in(rf"(?<![\w-])({'|'.join(sorted(names))})(?![\w-])", ("roles", "playbooks"),
                      ("argument_specs.yml",)) == []


def test_every_command_that_deploys_reads_the_hosts_state_first() -> None:
    # The service role needs aie_host_state (playbooks/discover.yml): every playbook the CLI runs
    # that deploys a container imports discover.yml before the play that does.
    def chain(playbook: Path) -> list[str]:
        names = [playbook.name]
        for play in yaml.safe_load(playbook.read_text()):
            if "ansible.builtin.import_playbook" in play:
                names += chain(playbook.parent / play["ansible.builtin.import_playbook"])
        return names

    deploying = {"backup_server.yml", "backup_agents.yml"} | set(chain(PROJECT / "playbooks/services.yml")[1:])
    commands = set(re.findall(r'"(playbooks/[a-z_]+\.yml|site\.yml)"', (PROJECT / "aie/cli.py").read_text()))
    assert {"site.yml", "playbooks/serve.yml", "playbooks/restore.yml"} <= commands
    late = {}
    for command in sorted(commands):
        names = chain(PROJECT / command)
        first = next((index for index, name in enumerate(names) if name in deploying), None)
        if first is not None and "discover.yml" not in names[:first]:
            late[command] = names[first]
    assert late == {}


def test_internal_ports_are_written_only_in_the_registry() -> None:
    # Each service's port inside the Docker network is aie_services' `port`; the roles pass it
    # into commands, configs and environments, and no role, Dockerfile or script writes it again.
    services = yaml.safe_load((PROJECT / "group_vars/all/services.yml").read_text())["aie_service_definitions"]
    ports = {str(service["port"]) for service in services.values()}
    written = []
    for path in sorted(p for p in (PROJECT / "roles").rglob("*") if p.is_file()):
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            code = line.split("#")[0] if path.suffix in (".yml", ".sh", ".py", "") else line
            if any(re.search(rf"(?<![\d.]){port}(?![\d])", code) for port in ports):
                written.append(f"{path.relative_to(PROJECT)}:{number}: {line.strip()}")
    assert written == []
