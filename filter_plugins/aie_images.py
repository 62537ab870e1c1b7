"""Filters for building images and running containers: one digest of everything each is made from.

A no-op deployment must not copy build contexts file by file and run builds through the
layer cache only to find nothing changed. The roles label each image with the digest of its
inputs (build context, sources, build arguments, parent images) and skip the whole
preparation when the label matches. Ansible's `hash` filter digests one string and the
`checksum`/`stat` facilities one file at a time on a host; nothing digests a tree of files on
the controller, hence this filter. Containers are labelled the same way (aie.config: their
config files, secrets, environment and volumes): a run that finds the label matching skips
writing them one by one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

_SKIPPED_DIRS = {"__pycache__"}


def _skipped(name: str) -> bool:
    # Dotfiles and dot-folders (macOS Finder's .DS_Store, AppleDouble ._* files, editors' and
    # tools' caches) are never part of an image.
    return name.startswith(".")


def aie_tree_files(root: str) -> list[str]:
    """The files under `root` that make a build context, sorted, relative to `root`.

    Dotfiles, files in dot-folders and caches are left out. The roles copy exactly these into
    a build context and aie_tree_digest digests exactly these: what is digested is what is copied.
    """
    if not os.path.isdir(root):
        raise ValueError(f"aie_tree_files: {root!r} is not a folder")
    names = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not _skipped(d))
        for name in files:
            if not _skipped(name):
                names.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(names)


def _file_sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def aie_tree_digest(root: str, names: Iterable[str] | None = None) -> str:
    """sha256 over the relative names, modes and contents of files under `root`.

    With `names`, only those files (relative to `root`); without, those aie_tree_files lists. A
    missing file raises, naming it: an image must not be built from a partial context.
    """
    if not os.path.isdir(root):
        raise ValueError(f"aie_tree_digest: {root!r} is not a folder")
    digest = hashlib.sha256()
    for name in sorted(names) if names is not None else aie_tree_files(root):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise ValueError(f"aie_tree_digest: {path!r} is not a file")
        executable = os.access(path, os.X_OK)
        digest.update(f"{name}\0{int(executable)}\0{_file_sha256(path)}\n".encode())
    return digest.hexdigest()


def aie_image_ref(name: str) -> str:
    """The reference Docker lists an image under: `name` with `:latest` unless it has a tag."""
    if "@" in name or ":" in name.rsplit("/", 1)[-1]:
        return name
    return f"{name}:latest"


def _listed(images: Iterable[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    ref = aie_image_ref(name)
    return next((image for image in images if ref in (image.get("RepoTags") or [])), {})


def aie_image_id(images: Iterable[Mapping[str, Any]], name: str) -> str:
    """The ID of image `name` among docker_image_info's `images` ('' when it is not there)."""
    return str(_listed(images, name).get("Id", ""))


def aie_image_label(images: Iterable[Mapping[str, Any]], name: str, label: str) -> str:
    """Label `label` of image `name` among docker_image_info's `images` ('' when absent).

    docker_host_info's verbose `images` (Docker's image list) hold the labels at the top level.
    """
    image = _listed(images, name)
    labels = (image.get("Config") or {}).get("Labels") or image.get("Labels") or {}
    return str(labels.get(label, ""))


def _with_contents(value: Any) -> Any:
    if isinstance(value, Mapping):
        counted = {key: _with_contents(item) for key, item in value.items()}
        if isinstance(value.get("src"), str):
            path = value["src"]
            counted["src_sha256"] = _file_sha256(path) if os.path.isfile(path) else None
        return counted
    if isinstance(value, (list, tuple)):
        return [_with_contents(item) for item in value]
    return value


def aie_config_digest(parts: Any) -> str:
    """sha256 over `parts` as JSON, where each mapping with a `src` file counts that file's contents.

    A missing `src` counts as missing (check mode before the keys exist), not as an error.
    """
    return hashlib.sha256(json.dumps(_with_contents(parts), sort_keys=True, default=str).encode()).hexdigest()


def aie_running_containers(containers: Iterable[Mapping[str, Any]], label: str) -> dict[str, dict[str, str]]:
    """Each running container among docker_host_info's verbose `containers`, by name: its label
    `label` (``config``), the ID of the image it runs (``image``) and the MLflow release that
    image was built with (``mlflow``, its label org.aie.mlflow-version; empty in images without
    MLflow, and in those built before the label). A stopped container is left out: it is not what
    a deployment left running."""
    return {
        str(name).lstrip("/"): {"config": str((container.get("Labels") or {}).get(label, "")),
                                "image": str(container.get("ImageID") or ""),
                                "mlflow": str((container.get("Labels") or {}).get("org.aie.mlflow-version", ""))}
        for container in containers
        if container.get("State") == "running"
        for name in container.get("Names") or []
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "aie_tree_files": aie_tree_files,
            "aie_tree_digest": aie_tree_digest,
            "aie_image_ref": aie_image_ref,
            "aie_image_id": aie_image_id,
            "aie_image_label": aie_image_label,
            "aie_config_digest": aie_config_digest,
            "aie_running_containers": aie_running_containers,
        }
