"""The digest that decides whether an image is prepared and built (filter_plugins/aie_images.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from jinja2.nativetypes import NativeEnvironment

from conftest import load_script

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def images() -> ModuleType:
    return load_script("filter_plugins/aie_images.py")


@pytest.fixture()
def context(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "entrypoint.sh").write_text("#!/bin/sh\n")
    return tmp_path


def test_the_digest_follows_content_names_and_modes(images: ModuleType, context: Path) -> None:
    first = images.aie_tree_digest(str(context))
    assert images.aie_tree_digest(str(context)) == first
    (context / "Dockerfile").write_text("FROM scratch\nUSER 1000\n")
    edited = images.aie_tree_digest(str(context))
    assert edited != first
    (context / "bin" / "entrypoint.sh").chmod(0o755)
    assert images.aie_tree_digest(str(context)) != edited
    (context / "bin" / "entrypoint.sh").rename(context / "bin" / "start.sh")
    assert len({first, edited, images.aie_tree_digest(str(context))}) == 3


def test_caches_do_not_count_and_listed_names_do(images: ModuleType, context: Path) -> None:
    before = images.aie_tree_digest(str(context))
    (context / "__pycache__").mkdir()
    (context / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert images.aie_tree_digest(str(context)) == before
    only = images.aie_tree_digest(str(context), ["Dockerfile"])
    assert only != before
    (context / "bin" / "entrypoint.sh").write_text("changed\n")
    assert images.aie_tree_digest(str(context), ["Dockerfile"]) == only


def _task(tasks_file: str, name: str) -> dict[str, Any]:
    tasks = yaml.safe_load((PROJECT / "roles" / "service" / "tasks" / tasks_file).read_text())
    return next(task for task in tasks if task["name"].startswith(name))


def test_dotfiles_are_neither_digested_nor_copied(images: ModuleType, tmp_path: Path) -> None:
    # What macOS Finder leaves in a role's docker folder it showed, and any dot-folder.
    context = tmp_path / "docker"
    shutil.copytree(PROJECT / "roles" / "python_image" / "docker", context)
    files = sorted(str(path.relative_to(context)) for path in context.rglob("*") if path.is_file())
    before = images.aie_tree_digest(str(context))
    (context / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (context / ".hidden").mkdir()
    (context / ".hidden" / "x").write_text("x\n")
    (context / "sub").mkdir()
    (context / "sub" / ".DS_Store").write_bytes(b"\0")
    assert images.aie_tree_digest(str(context)) == before
    # The files image_build_steps.yml copies, as image_steps.yml lists them with the digest.
    env = NativeEnvironment()
    env.filters.update(images.FilterModule().filters())
    listing = _task("image_steps.yml", "Digest the inputs")["ansible.builtin.set_fact"]
    # A native environment renders lists, not their text.
    listed: Any = env.from_string(listing["__service_image_context_files"]).render(
        __service_image_context_dir=str(context))
    copy = _task("image_build_steps.yml", "Copy the build context")
    assert copy["ansible.builtin.copy"]["src"] == "{{ __service_image_context_dir }}/{{ item }}"
    copied: Any = env.from_string(copy["loop"]).render(__service_image_context_files=listed)
    assert copied == files


def test_a_missing_file_or_folder_is_named(images: ModuleType, context: Path) -> None:
    with pytest.raises(ValueError, match="nothing.py"):
        images.aie_tree_digest(str(context), ["nothing.py"])
    with pytest.raises(ValueError, match="absent"):
        images.aie_tree_digest(str(context / "absent"))


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("aie/mlflow", "aie/mlflow:latest"),
        ("aie/mlflow:2", "aie/mlflow:2"),
        ("registry:5000/aie/mlflow", "registry:5000/aie/mlflow:latest"),
        ("debian:trixie-slim", "debian:trixie-slim"),
        ("debian@sha256:" + "0" * 64, "debian@sha256:" + "0" * 64),
    ],
)
def test_image_references_get_the_tag_docker_lists(images: ModuleType, name: str, ref: str) -> None:
    assert images.aie_image_ref(name) == ref


def test_ids_and_labels_are_read_from_the_listed_image(images: ModuleType) -> None:
    found = [
        {"Id": "sha256:base", "RepoTags": ["aie/common:latest"], "Config": {"Labels": None}},
        {"Id": "sha256:own", "RepoTags": ["aie/mlflow:latest"], "Config": {"Labels": {"aie.inputs": "abc"}}},
    ]
    assert images.aie_image_id(found, "aie/common") == "sha256:base"
    assert images.aie_image_label(found, "aie/mlflow", "aie.inputs") == "abc"
    assert images.aie_image_label(found, "aie/common:latest", "aie.inputs") == ""
    assert images.aie_image_id(found, "aie/ml") == "" and images.aie_image_label(found, "aie/ml", "aie.inputs") == ""


def test_labels_are_read_from_docker_s_image_list_too(images: ModuleType) -> None:
    # docker_host_info's verbose images hold their labels at the top level.
    listed = [{"Id": "sha256:own", "RepoTags": ["aie/mlflow:latest"], "Labels": {"aie.inputs": "abc"}}]
    assert images.aie_image_label(listed, "aie/mlflow", "aie.inputs") == "abc"
    assert images.aie_image_id(listed, "aie/mlflow:latest") == "sha256:own"


def test_the_config_digest_counts_the_contents_of_source_files(images: ModuleType, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("one")
    parts = {"files": [{"name": "key", "src": str(key)}], "env": {"A": "1"}}
    first = images.aie_config_digest(parts)
    assert images.aie_config_digest(parts) == first
    assert images.aie_config_digest({**parts, "env": {"A": "2"}}) != first
    key.write_text("two")
    assert images.aie_config_digest(parts) != first
    key.unlink()
    assert images.aie_config_digest(parts) not in (first, images.aie_config_digest({**parts, "files": []}))


def test_each_running_container_s_label_and_image_are_found_by_name(images: ModuleType) -> None:
    containers = [
        {"Names": ["/aie-mlflow"], "ImageID": "sha256:1", "State": "running",
         "Labels": {"aie.config": "abc", "aie.inputs": "x", "org.aie.mlflow-version": "3.17.2"}},
        {"Names": ["/aie-sftp"], "Labels": None, "ImageID": "sha256:2", "State": "running"},
        {"Names": ["/aie-s3"], "Labels": {"aie.config": "def"}, "ImageID": "sha256:3", "State": "exited"},
    ]
    assert images.aie_running_containers(containers, "aie.config") == {
        "aie-mlflow": {"config": "abc", "image": "sha256:1", "mlflow": "3.17.2"},
        "aie-sftp": {"config": "", "image": "sha256:2", "mlflow": ""},
    }
