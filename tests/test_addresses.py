"""The one place that computes service addresses (filter_plugins/aie.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import load_script

PROJECT = Path(__file__).resolve().parent.parent

SERVICES = {
    "mlflow": {"group": "mlflow", "container": "aie-mlflow", "port": 5000, "published_port": 5500},
    "sftp": {"group": "sftp", "container": "aie-sftp", "port": 22, "published_port": 2222},
    "s3": {"group": "s3", "container": "aie-s3", "port": 9000, "published_port": 9000},
}


@pytest.fixture(scope="module")
def aie_filters() -> ModuleType:
    return load_script("filter_plugins/aie_topology.py")


def test_one_host_uses_the_docker_network(aie_filters: ModuleType) -> None:
    hostvars = {"localhost": {"ansible_connection": "local"}}
    groups = {"mlflow": ["localhost"], "sftp": ["localhost"], "s3": ["localhost"]}
    endpoints = aie_filters.aie_endpoints(SERVICES, "localhost", hostvars, groups)
    assert endpoints["sftp"] == {
        "server": "localhost", "host": "aie-sftp", "port": 22, "from_host": {"host": "127.0.0.1", "port": 2222},
        "public": {"host": "localhost", "port": 2222},
    }
    assert endpoints["mlflow"]["host"] == "aie-mlflow" and endpoints["mlflow"]["port"] == 5000


def test_separate_hosts_use_address_and_published_port(aie_filters: ModuleType) -> None:
    hostvars = {
        "m1": {"ansible_host": "10.1.0.10"},
        "s1": {"ansible_host": "10.1.0.11"},
        "o1": {"ansible_host": "10.1.0.12", "aie_advertised_address": "s3.example.org"},
    }
    groups = {"mlflow": ["m1"], "sftp": ["s1"], "s3": ["o1"]}
    endpoints = aie_filters.aie_endpoints(SERVICES, "m1", hostvars, groups)
    assert endpoints["mlflow"]["host"] == "aie-mlflow" and endpoints["mlflow"]["port"] == 5000
    assert endpoints["mlflow"]["from_host"] == {"host": "127.0.0.1", "port": 5500}
    assert endpoints["sftp"] == {
        "server": "s1", "host": "10.1.0.11", "port": 2222, "from_host": {"host": "10.1.0.11", "port": 2222},
        "public": {"host": "10.1.0.11", "port": 2222},
    }
    assert endpoints["s3"]["host"] == "s3.example.org" and endpoints["s3"]["port"] == 9000
    from_sftp = aie_filters.aie_endpoints_of(SERVICES, "sftp", ["m1", "s1"], hostvars, groups)
    assert [e["host"] for e in from_sftp] == ["10.1.0.11", "aie-sftp"]


def test_https_services_have_https_urls_and_certificates_that_name_every_client_view(aie_filters: ModuleType) -> None:
    services = {
        "mlflow": {**SERVICES["mlflow"], "health": {"path": "/health"}, "tls": True},
        "s3": {**SERVICES["s3"], "health": {"path": "/"}},
        "sftp": SERVICES["sftp"],
    }
    hostvars = {"m1": {"ansible_host": "10.1.0.10", "aie_advertised_address": "mlflow.example.org"},
                "j1": {"ansible_host": "10.1.0.11"}, "o1": {"ansible_host": "10.1.0.12"}}
    groups = {"aie": ["m1", "j1", "o1"], "mlflow": ["m1"], "sftp": ["m1"], "s3": ["o1"], "jupyterlab": ["j1"]}
    from_j1 = aie_filters.aie_endpoints(services, "j1", hostvars, groups)
    assert from_j1["mlflow"]["url"] == "https://mlflow.example.org:5500"
    assert from_j1["mlflow"]["from_host"]["url"] == "https://mlflow.example.org:5500"
    assert from_j1["s3"]["url"] == "http://10.1.0.12:9000"
    assert "url" not in from_j1["sftp"]
    from_m1 = aie_filters.aie_endpoints(services, "m1", hostvars, groups)["mlflow"]
    assert (from_m1["url"], from_m1["from_host"]["url"]) == ("https://aie-mlflow:5000", "https://127.0.0.1:5500")
    # What people open (`aie status`): the host's advertised name and published port, from any host.
    assert from_m1["public"] == from_j1["mlflow"]["public"] == {
        "host": "mlflow.example.org", "port": 5500, "url": "https://mlflow.example.org:5500"}
    # The MLflow host's certificate: its container name, its advertised name, loopback, and what
    # is given (its address on the network); the hosts without an HTTPS service need none.
    assert aie_filters.aie_tls_names(services, "m1", hostvars, groups, ["10.1.0.10", ""]) == [
        "DNS:aie-mlflow", "DNS:localhost", "DNS:mlflow.example.org", "IP:10.1.0.10", "IP:127.0.0.1"]
    assert aie_filters.aie_tls_names(services, "o1", hostvars, groups) == ["DNS:localhost", "IP:127.0.0.1"]


def test_a_service_without_hosts_has_no_endpoint(aie_filters: ModuleType) -> None:
    endpoints = aie_filters.aie_endpoints(SERVICES, "a", {"a": {}}, {"mlflow": ["a"], "sftp": []})
    assert set(endpoints) == {"mlflow"}


def test_known_host_names_use_the_port_form(aie_filters: ModuleType) -> None:
    names = aie_filters.aie_known_host_names(
        [{"host": "aie-sftp", "port": 22}, {"host": "10.0.0.5", "port": 2222}], ["localhost", ""], 2222
    )
    assert names == ["[10.0.0.5]:2222", "[localhost]:2222", "aie-sftp"]


def test_volume_mounts_carry_the_prefix(aie_filters: ModuleType) -> None:
    assert aie_filters.aie_volume_mounts({"mlflow-data": "/mlflow"}, "t1") == [
        {"type": "volume", "source": "t1-mlflow-data", "target": "/mlflow", "no_copy": True}
    ]


def test_an_external_service_is_reached_at_its_url_from_every_host(aie_filters: ModuleType) -> None:
    services = {**SERVICES, "s3": {**SERVICES["s3"], "external": "https://s3.example.org:8443/"}}
    hostvars = {"m1": {"ansible_host": "10.1.0.10"}, "j1": {"ansible_connection": "local"}}
    # No host in the s3 group: the external service needs none.
    groups = {"mlflow": ["m1"], "sftp": ["m1"], "s3": [], "jupyterlab": ["j1"]}
    for client in ("m1", "j1"):
        s3 = aie_filters.aie_endpoints(services, client, hostvars, groups)["s3"]
        address = {"host": "s3.example.org", "port": 8443, "url": "https://s3.example.org:8443"}
        assert s3 == {"server": "", **address, "from_host": address, "public": address}
    plain = {"s3": {**SERVICES["s3"], "external": "http://ceph-rgw.lan"}}
    assert aie_filters.aie_endpoints(plain, "m1", hostvars, groups)["s3"]["port"] == 80
    assert aie_filters.aie_required_groups(services) == ["mlflow", "sftp"]
    assert aie_filters.aie_required_groups(SERVICES) == ["mlflow", "sftp", "s3"]
    assert aie_filters.aie_hosted(services, ["s3", "mlflow"]) == ["mlflow"]
    with pytest.raises(ValueError, match="not an http"):
        aie_filters.aie_endpoints({"s3": {**SERVICES["s3"], "external": "s3.example.org"}}, "m1", hostvars, groups)


@pytest.mark.parametrize(("inventory", "hosts"), [
    ("inventory/local", {"localhost"}),
    ("inventory/multi-host", {"mlflow-1", "notebooks-1", "serving-1", "s3-1"}),
])
def test_every_client_is_given_the_external_endpoint(inventory: str, hosts: set[str], tmp_path: Path) -> None:
    """The clients' environment and files as Ansible computes them from group_vars (no host is contacted)."""
    url = "https://s3.internal.example:7480"
    settings = {"s3_engine": "external", "aie_s3_endpoint": url, "aie_s3_region": "eu-central-1",
                "aie_s3_ca_bundle": "/etc/ssl/private-ca.pem", "aie_keys_dir": str(tmp_path / "keys"),
                "aie_s3_access_key": "A" * 20, "aie_s3_secret_key": "b" * 40}
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(settings))
    shown = "{{ {'env': aie_artifact_client_env, 'files': aie_artifact_files.client, 'volumes': aie_host_volumes," \
            " 'endpoint': aie_endpoints.s3} | to_json }}"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "-i", inventory, "mlflow:jupyterlab:serving:s3",
         "-m", "ansible.builtin.debug", "-a", f"msg={shown}", "-e", f"@{vars_file}", "-o"],
        cwd=PROJECT, capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1"),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if "SUCCESS" in line]
    assert {line.split(" ", 1)[0] for line in lines} == hosts, result.stdout
    for line in lines:
        shown_vars = json.loads(json.loads(line.split("=> ", 1)[1])["msg"])
        env = shown_vars["env"]
        assert env["MLFLOW_S3_ENDPOINT_URL"] == url, line
        assert shown_vars["endpoint"]["url"] == url
        assert env["AWS_DEFAULT_REGION"] == "eu-central-1"
        assert env["AWS_CA_BUNDLE"] == "/etc/aie/s3/ca-bundle.pem"
        assert {"name": "s3/ca-bundle.pem", "src": "/etc/ssl/private-ca.pem"} in shown_vars["files"]
        # No S3 volume to back up anywhere.
        assert "minio-data" not in shown_vars["volumes"]


PUBLISHED = [(None, "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("10.9.8.7", "10.9.8.7")]


@pytest.mark.parametrize(("publish", "probe"), PUBLISHED)
def test_probes_reach_the_published_ports_where_they_are_published(
    publish: str | None, probe: str, tmp_path: Path
) -> None:
    """Health probes and same-host clients use the address ports are published on, not loopback by hand."""
    settings = {"aie_keys_dir": str(tmp_path / "keys")} | ({"aie_publish_address": publish} if publish else {})
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(settings))
    shown = "{{ {'probe': aie_probe_address, 'mlflow': aie_endpoints.mlflow.from_host.host} | to_json }}"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "-i", "inventory/local", "localhost",
         "-m", "ansible.builtin.debug", "-a", f"msg={shown}", "-e", f"@{vars_file}", "-o"],
        cwd=PROJECT, capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1"),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    shown_vars = json.loads(json.loads(result.stdout.split("=> ", 1)[1])["msg"])
    assert shown_vars == {"probe": probe, "mlflow": probe}


def test_the_database_admits_the_mlflow_hosts_only(aie_filters: ModuleType) -> None:
    # PostgreSQL's pg_hba (roles/database): on its own engine, the services' network; from
    # another host, that host's address as its facts give it, or as it is reached.
    hostvars = {
        "db": {"ansible_host": "10.0.0.5"},
        "m1": {"ansible_host": "m1.example", "ansible_facts": {"default_ipv4": {"address": "10.0.0.7"}}},
        "m2": {"ansible_host": "10.0.0.8"},
        "m3": {"ansible_host": "m3.example"},
    }
    assert aie_filters.aie_client_addresses(["db"], "db", hostvars, ["172.18.0.0/16"]) == ["172.18.0.0/16"]
    assert aie_filters.aie_client_addresses(["m1", "m2"], "db", hostvars, ["172.18.0.0/16"]) == [
        "10.0.0.7/32", "10.0.0.8/32"]
    with pytest.raises(ValueError, match="the address of m3 is not known.*'m3.example'.*database_client_addresses"):
        aie_filters.aie_client_addresses(["m3"], "db", hostvars, [])
