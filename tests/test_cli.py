"""The `aie` CLI and its ansible-runner wrapper, with real ansible-playbook runs."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from aie import cli
from aie.runner import docker_context_env, find_project_dir, run_playbook
from conftest import PROJECT, aie, one_play_project


def test_project_dir_is_found_from_a_subfolder() -> None:
    assert find_project_dir(PROJECT / "roles" / "sftp") == PROJECT


def test_a_missing_inventory_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "-i", "/nonexistent/inventory"]) == 1
    assert "inventory /nonexistent/inventory does not exist" in capsys.readouterr().err


def test_every_command_prints_its_wall_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["snapshots", "-i", "/nonexistent/inventory"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(r"aie: snapshots took [0-9]+[.][0-9] s", lines[-2]), lines
    assert lines[-1].startswith("aie: error: inventory /nonexistent/inventory")


def test_the_cli_finds_the_files_where_the_playbooks_keep_them(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    # The CA, the JupyterLab token, the admin password and the served models' records: the CLI
    # finds them from group_vars/all/paths.yml's plain layout, where the playbooks put them.
    monkeypatch.delenv("AIE_KEYS_DIR", raising=False)
    names = ("aie_tls_ca_bundle", "aie_secrets_dir", "aie_serving_record", "aie_client_record")
    inventory = one_play_project(tmp_path, (
        "- hosts: localhost\n  gather_facts: false\n"
        f"  vars_files: {[str(PROJECT / 'group_vars/all' / name) for name in ('paths.yml', 'tls.yml')]}\n"
        "  tasks:\n    - ansible.builtin.set_fact:\n        aie_report:\n"
        + "".join(f"          {name}: '{{{{ {name} }}}}'\n" for name in names)))
    result = run_playbook("play.yml", project_dir=tmp_path, inventory=inventory,
                          extra_args=["-e", f"aie_project_dir={PROJECT}"], out=io.StringIO())
    assert result.ok, result.failures
    played = result.facts["localhost"]
    keys, layout = cli.keys_dir(PROJECT), cli.keys_layout(PROJECT)
    assert Path(played["aie_tls_ca_bundle"]) == keys / layout["ca"]
    assert Path(played["aie_secrets_dir"]) == (keys / layout["jupyterlab_token"]).parent
    assert Path(played["aie_secrets_dir"]) == (keys / layout["mlflow_admin_password"]).parent
    assert Path(played["aie_serving_record"]).parent == keys / layout["serving"]
    assert Path(played["aie_client_record"]) == keys / layout["client"]
    source = (PROJECT / "aie/cli.py").read_text()
    assert not re.search(r'/ "(tls|secrets|serving|ca\.pem|keys)"|"files" /|files/keys', source)


def test_the_keys_folder_follows_aie_keys_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIE_KEYS_DIR", raising=False)
    assert cli.keys_dir(PROJECT) == PROJECT / "files" / "keys"
    monkeypatch.setenv("AIE_KEYS_DIR", str(tmp_path))
    assert cli.keys_dir(PROJECT) == tmp_path
    # -e outranks the environment, in each form ansible-playbook reads.
    (tmp_path / "vars.yml").write_text("aie_keys_dir: /from/file\n")
    assert cli.keys_dir(PROJECT, [f"@{tmp_path / 'vars.yml'}"]) == Path("/from/file")
    assert cli.keys_dir(PROJECT, ['{"aie_keys_dir": "/from/json"}']) == Path("/from/json")
    assert cli.keys_dir(PROJECT, ["aie_name_prefix=x aie_keys_dir=/from/kv"]) == Path("/from/kv")
    assert cli.keys_dir(PROJECT, ["aie_name_prefix=x"]) == tmp_path


def test_client_env_prints_a_laptops_exports_and_never_a_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["client-env", "--user", "alice", "-e", f"aie_keys_dir={tmp_path}"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"aie: error: no deployment is recorded in {tmp_path / 'client.json'}: run aie up first")
    layout = cli.keys_layout(PROJECT)
    ca = tmp_path / layout["ca"]
    ca.parent.mkdir()
    ca.write_text("-----BEGIN CERTIFICATE-----\nthe deployment's CA\n-----END CERTIFICATE-----\n")
    record = {"tracking_uri": "https://mlflow.example:5000", "ca": str(ca), "users": ["alice", "bob o'hara"],
              "generated_passwords": str(tmp_path / "secrets" / "mlflow_users")}
    (tmp_path / layout["client"]).write_text(json.dumps(record))
    assert cli.main(["client-env", "--user", "mallory", "-e", f"aie_keys_dir={tmp_path}"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "aie: error: mallory has no MLflow account here (mlflow_users: alice, bob o'hara): add them to "
        "mlflow_users and run aie up")
    assert cli.main(["client-env", "--user", "bob o'hara", "-e", f"aie_keys_dir={tmp_path}"]) == 0
    printed = capsys.readouterr().out
    # What a shell makes of it.
    shell = subprocess.run(["sh", "-c", printed + "\nenv"], capture_output=True, text=True, check=True,
                           env={"PATH": os.environ["PATH"]}).stdout
    exported = dict(line.split("=", 1) for line in shell.splitlines() if "=" in line)
    assert exported["MLFLOW_TRACKING_URI"] == "https://mlflow.example:5000"
    assert exported["MLFLOW_TRACKING_USERNAME"] == "bob o'hara"
    assert exported["MLFLOW_TRACKING_SERVER_CERT_PATH"] == str(ca)
    bundle = Path(exported["REQUESTS_CA_BUNDLE"]).read_text()
    assert bundle.endswith(ca.read_text()) and bundle.count("BEGIN CERTIFICATE") > 10
    assert exported["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] == "true"
    assert "MLFLOW_TRACKING_PASSWORD" not in exported
    assert str(tmp_path / "secrets" / "mlflow_users" / "bob o'hara") in printed


def test_predict_without_a_served_model_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["predict", "-e", f"aie_keys_dir={tmp_path}"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"aie: error: no served model is recorded in {tmp_path / 'serving'}: run aie serve")


def test_predict_names_the_address_that_does_not_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A served model recorded by aie serve, whose server is gone (a port nothing listens on).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "serving").mkdir()
    record = {"url": f"http://127.0.0.1:{port}", "model_uri": "models:/m/1", "served_as": "models:/m@a",
              "example": {"inputs": [[0]]}}
    (tmp_path / "serving" / "localhost.json").write_text(json.dumps(record))
    assert cli.main(["predict", "-e", f"aie_keys_dir={tmp_path}"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"aie: error: no model answers at http://127.0.0.1:{port} (")
    assert last.endswith("run aie serve (aie status shows what runs)")


def test_running_a_playbook_leaves_path_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # ansible-playbook is found beside this Python even when that folder is not on PATH.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    before = os.environ.get("PATH")
    result = run_playbook("playbooks/keys.yml", project_dir=PROJECT, inventory=PROJECT / "inventory" / "local",
                          extra_args=["-e", f"aie_keys_dir={tmp_path}", "--check"], out=io.StringIO())
    assert result.ok, result.failures
    assert os.environ.get("PATH") == before


def test_sizes_are_printed_in_binary_units() -> None:
    assert [cli._size(n) for n in (512, 1536, 3 * 1024**2, 5 * 1024**4, None)] == [
        "512 B", "1.5 KiB", "3.0 MiB", "5120.0 GiB", "-"]


def test_status_lines_and_what_needs_attention() -> None:
    service = {"url": "https://localhost:5000", "healthy": True, "metrics": "", "optional": False, "order": 0}
    backup = {"snapshot": "1a2b3c4d", "age_seconds": 5 * 3600 + 60, "schedule": "17 3 * * *", "overdue": False}
    certificate = {"path": "/keys/tls/a.pem", "not_after": "29991231235959Z", "renew": False, "renew_days": 30}
    reports = {"a": {"services": {"mlflow": service}, "backup": backup, "certificate": certificate},
               "b": {"services": {"sftp": {**service, "url": "sftp://b:22", "healthy": False}},
                     "backup": {**backup, "snapshot": None, "age_seconds": None, "overdue": True},
                     "certificate": {**certificate, "not_after": "20000101000000Z", "renew": True}},
               "c": {"services": {}, "backup": {"error": "No such container: aie-backup"}, "certificate": {}}}
    lines, problems = cli.status_lines(reports)
    assert lines[:2] == ["mlflow        healthy  https://localhost:5000               (a)",
                         "backup        ok       snapshot 1a2b3c4d, 5 h ago           (a; schedule 17 3 * * *)"]
    assert re.fullmatch(r"certificate   ok       valid until 2999-12-31 \(\d+ days\) \(a\)", lines[2]), lines[2]
    assert [line.split()[:2] for line in problems] == [["sftp", "DOWN"], ["backup", "OVERDUE"],
                                                      ["certificate", "RENEW"], ["backup", "DOWN"]]
    assert "no snapshot yet" in problems[1] and "within 30 days of its expiry" in problems[2]
    assert "/keys/tls/a.pem" in problems[2] and "No such container: aie-backup" in problems[3]


def test_a_second_changing_command_on_a_deployment_says_who_holds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    with cli.deployment_lock(keys, "aie restore"):
        refused = aie("backup", "-e", f"aie_keys_dir={keys}", timeout=120)
        assert refused.returncode == 1
        last = refused.stderr.strip().splitlines()[-1]
        assert re.fullmatch(rf"aie: error: aie restore \(pid {os.getpid()}, since \d\d:\d\d:\d\d\) is running on this "
                            rf"deployment \({re.escape(str(keys))}\): wait until it ends, then run aie backup again",
                            last), last
        assert "PLAY" not in refused.stdout + refused.stderr
        # Another deployment (another keys folder), and commands that only read, go on meanwhile.
        assert cli.main(["status", "-i", "/nonexistent/inventory", "-e", f"aie_keys_dir={keys}"]) == 1
        assert "inventory /nonexistent/inventory does not exist" in capsys.readouterr().err
        with cli.deployment_lock(tmp_path / "other-keys", "aie up"):
            pass
    # Let go when its holder ends.
    with cli.deployment_lock(keys, "aie up"):
        pass


def test_purge_is_refused_without_confirmation() -> None:
    # No terminal to ask on and no --yes: nothing is removed.
    result = aie("down", "--purge", timeout=120)
    assert result.returncode == 1
    expected = r"aie: down took [0-9.]+ s\naie: error: not purging: nothing was removed"
    assert re.fullmatch(expected, result.stderr.strip())


def test_an_unreachable_host_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n    ghost:\n      ansible_host: 127.0.0.1\n      ansible_port: 1\n"
        "      ansible_ssh_common_args: -o ConnectTimeout=5\n"
        "  children:\n    aie:\n      children:\n        sftp:\n          hosts:\n            ghost:\n"
    )
    out = io.StringIO()
    result = run_playbook("playbooks/status.yml", project_dir=PROJECT, inventory=inventory, out=out)
    assert result.rc != 0
    assert result.failures and result.failures[0].startswith("host ghost is unreachable:")
    assert "UNREACHABLE" in out.getvalue()


def test_a_failed_task_is_reported_with_its_message(tmp_path: Path) -> None:
    result = aie("up", "-e", "aie_s3_secret_key=minioadmin", "-e", f"aie_keys_dir={tmp_path}", timeout=300)
    assert result.returncode == 1
    # Progress goes to stderr too; the error is one line, the last one.
    errors = [line for line in result.stderr.splitlines() if line.startswith("aie: error:")]
    assert len(errors) == 1
    assert errors[0] == result.stderr.strip().splitlines()[-1]
    assert errors[0].startswith("aie: error: task 'Check aie_s3_secret_key' failed on localhost:")


def test_a_rescued_failure_is_not_the_one_reported(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    (tmp_path / "play.yml").write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - block:\n        - name: Try\n          ansible.builtin.fail: {msg: rescued}\n"
        "      rescue:\n        - name: Explain\n          ansible.builtin.fail: {msg: the real reason}\n")
    result = run_playbook("play.yml", project_dir=tmp_path, inventory=tmp_path / "hosts.yml", out=io.StringIO())
    assert not result.ok
    assert result.failures == ["task 'Explain' failed on localhost: the real reason"]


@pytest.mark.parametrize(("rc", "condition"), [
    (0, "changed_when: (init.stdout | from_json).created"),  # ansible-core: "Unknown error."
    (1, "changed_when: false"),  # the command module: "non-zero return code"
])
def test_a_failed_command_is_reported_with_what_it_said(tmp_path: Path, rc: int, condition: str) -> None:
    inventory = one_play_project(tmp_path, (
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        f"    - name: Init\n      ansible.builtin.command: sh -c 'echo wrong password >&2; exit {rc}'\n"
        f"      register: init\n      {condition}\n"))
    result = run_playbook("play.yml", project_dir=tmp_path, inventory=inventory, out=io.StringIO())
    assert not result.ok
    assert result.failures == ["task 'Init' failed on localhost: wrong password"]


def test_progress_names_plays_and_changes(tmp_path: Path) -> None:
    # The keys play alone: it generates keys, so it reports changes, task by task.
    inventory = PROJECT / "inventory" / "local"
    out = io.StringIO()
    result = run_playbook(
        "playbooks/keys.yml",
        project_dir=PROJECT,
        inventory=inventory,
        extra_args=["-e", f"aie_keys_dir={tmp_path}"],
        out=out,
    )
    assert result.ok, result.failures
    assert result.changed >= 3
    text = out.getvalue()
    assert "== Generate keys, known_hosts and client configs on the controller" in text
    assert "changed  localhost        Generate the keys" in text
    assert (tmp_path / "sftp_client_ed25519").stat().st_mode & 0o777 == 0o600
    again = run_playbook(
        "playbooks/keys.yml",
        project_dir=PROJECT,
        inventory=inventory,
        extra_args=["-e", f"aie_keys_dir={tmp_path}"],
        out=io.StringIO(),
    )
    assert again.ok and again.changed == 0


def test_the_docker_host_is_the_one_of_the_clis_context(tmp_path: Path) -> None:
    # A docker CLI whose current context names Docker Desktop's socket (a stand-in that answers
    # `docker context inspect` as the real CLI does).
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "context inspect" ] && echo "unix:///Users/me/.docker/run/docker.sock"\n')
    fake.chmod(0o755)
    assert docker_context_env({"PATH": str(tmp_path)}) == {"DOCKER_HOST": "unix:///Users/me/.docker/run/docker.sock"}
    # DOCKER_HOST given by the user wins; with no docker CLI, the modules keep their default.
    assert docker_context_env({"PATH": str(tmp_path), "DOCKER_HOST": "tcp://10.0.0.5:2376"}) == {}
    assert docker_context_env({"PATH": str(tmp_path / "nowhere")}) == {}
