"""The one place that computes service addresses (filter_plugins/aie.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SERVICES = {
    "mlflow": {"group": "mlflow", "container": "aie-mlflow", "port": 5000, "published_port": 5500},
    "sftp": {"group": "sftp", "container": "aie-sftp", "port": 22, "published_port": 2222},
    "s3": {"group": "minio", "container": "aie-minio", "port": 9000, "published_port": 9000},
}


@pytest.fixture(scope="module")
def aie_filters() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "filter_plugins" / "aie_topology.py"
    spec = importlib.util.spec_from_file_location("aie_filters", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_host_uses_the_docker_network(aie_filters: ModuleType) -> None:
    hostvars = {"localhost": {"ansible_connection": "local"}}
    groups = {"mlflow": ["localhost"], "sftp": ["localhost"], "minio": ["localhost"]}
    endpoints = aie_filters.aie_endpoints(SERVICES, "localhost", hostvars, groups)
    assert endpoints["sftp"] == {
        "server": "localhost", "host": "aie-sftp", "port": 22, "from_host": {"host": "127.0.0.1", "port": 2222}
    }
    assert endpoints["mlflow"]["host"] == "aie-mlflow" and endpoints["mlflow"]["port"] == 5000


def test_separate_hosts_use_address_and_published_port(aie_filters: ModuleType) -> None:
    hostvars = {
        "m1": {"ansible_host": "10.1.0.10"},
        "s1": {"ansible_host": "10.1.0.11"},
        "o1": {"ansible_host": "10.1.0.12", "aie_advertised_address": "s3.example.org"},
    }
    groups = {"mlflow": ["m1"], "sftp": ["s1"], "minio": ["o1"]}
    endpoints = aie_filters.aie_endpoints(SERVICES, "m1", hostvars, groups)
    assert endpoints["mlflow"]["host"] == "aie-mlflow" and endpoints["mlflow"]["port"] == 5000
    assert endpoints["mlflow"]["from_host"] == {"host": "127.0.0.1", "port": 5500}
    assert endpoints["sftp"] == {
        "server": "s1", "host": "10.1.0.11", "port": 2222, "from_host": {"host": "10.1.0.11", "port": 2222}
    }
    assert endpoints["s3"]["host"] == "s3.example.org" and endpoints["s3"]["port"] == 9000
    from_sftp = aie_filters.aie_endpoints_of(SERVICES, "sftp", ["m1", "s1"], hostvars, groups)
    assert [e["host"] for e in from_sftp] == ["10.1.0.11", "aie-sftp"]


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
        {"type": "volume", "source": "t1-mlflow-data", "target": "/mlflow"}
    ]
