"""The destination of MLflow's proxied artifacts (``mlflow server --artifacts-destination
aie-routed:/``): each experiment's artifacts go to the store its ``aie.artifact_store`` tag names.

Why it exists: MLflow's tracking server proxies artifacts (``--serve-artifacts``) to one
destination, but aie keeps each experiment's artifacts on SFTP or on S3, as the experiment says.
Clients then need nothing but their MLflow account: they log to ``mlflow-artifacts:/`` and the
server, which alone holds the storage credentials, writes to the store. MLflow's basic-auth app
checks each proxied path against the permissions of the experiment it starts with, so a person
denied an experiment is refused its artifacts as well as its runs.

Other designs, and why not:
- One artifacts-only server per store (``mlflow server --artifacts-only``), with experiments
  located at ``mlflow-artifacts://<its host:port>/``: two more servers to run, confine, give
  TLS and keep up to date, and experiment locations that name a host and port forever.
- A store chosen from the experiment's artifact location: MLflow builds a proxied location
  from the experiment's id (``mlflow-artifacts:/<id>``), which is not known before the
  experiment is made, and the permission check needs the path to start with that id.

The settings, in the server's environment (not secrets; the stores' credentials are the
server's own files, ~/.ssh and ~/.aws):
- ``AIE_ARTIFACT_STORES``: JSON, store name -> the URI under which its experiments' artifacts
  go, e.g. ``{"sftp": "sftp://sftp/artifacts/by-experiment-id", "s3": "s3://ai-models/by-experiment-id"}``;
- ``AIE_ARTIFACT_DEFAULT_STORE``: the store of experiments without the tag (made in the UI);
- ``AIE_S3_PRESIGN_ENDPOINT_URL``: the S3 endpoint that clients reach, named in the presigned
  URLs of multipart uploads (clients send the parts straight to S3); the server itself calls S3
  at ``MLFLOW_S3_ENDPOINT_URL``. Unset: the same.

A path is ``<experiment id>/<run id>/artifacts/...`` (MLflow's layout under ``mlflow-artifacts:/``),
kept as it is under the store's URI. A path that names no experiment is refused: nothing writes
there, and MLflow would judge it by the default permission rather than an experiment's.

The tag is read from the tracking store at each call (one indexed query), so a tag changed in
the UI applies at once: artifacts logged before the change stay in the store they were written
to, and are no longer found through the proxy until the tag is changed back. ``aie up`` puts the
tags of the experiments it manages back as the inventory says.
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import re
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import AsyncIterable
from typing import Any, BinaryIO

from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException, _UnsupportedMultipartUploadException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.artifact.artifact_repo import ArtifactRepository, MultipartUploadMixin
from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

try:
    from mlflow.store.artifact.artifact_repo import StreamUploadMixin
except ImportError:  # an MLflow without streaming uploads: it never calls the methods below

    class StreamUploadMixin:  # type: ignore[no-redef]
        pass


STORE_TAG = "aie.artifact_store"
ENV_STORES = "AIE_ARTIFACT_STORES"
ENV_DEFAULT_STORE = "AIE_ARTIFACT_DEFAULT_STORE"
ENV_PRESIGN_ENDPOINT = "AIE_S3_PRESIGN_ENDPOINT_URL"
_EXPERIMENT_ID = re.compile(r"[0-9]+")
_CHUNK = 1024 * 1024
# What MLflow's client takes for "no multipart uploads here" (it then uploads in one request).
_UNSUPPORTED_MULTIPART: Any = _UnsupportedMultipartUploadException


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def stores_from_environment() -> tuple[dict[str, str], str]:
    """The stores (name -> URI) and the default store's name, checked."""
    try:
        stores = json.loads(os.environ.get(ENV_STORES, ""))
    except ValueError:
        raise _invalid(f"{ENV_STORES} is not JSON (store name -> URI)") from None
    if not isinstance(stores, dict) or not stores or not all(
            isinstance(name, str) and isinstance(uri, str) and uri for name, uri in stores.items()):
        raise _invalid(f"{ENV_STORES} names no store (a JSON object of store name -> URI)")
    default = os.environ.get(ENV_DEFAULT_STORE, "")
    if default not in stores:
        raise _invalid(f"{ENV_DEFAULT_STORE}={default!r} is none of the stores of {ENV_STORES}: {sorted(stores)}")
    return stores, default


def experiment_tag(experiment_id: str) -> str | None:
    """The experiment's store tag, read from the tracking server's own store: this runs in the
    server, whose REST API would ask for an account this process does not have."""
    from mlflow.server.handlers import _get_tracking_store

    store: Any = _get_tracking_store()
    tag = store.get_experiment(experiment_id).tags.get(STORE_TAG)
    return None if tag is None else str(tag)


class _PublicPresigning:
    """An S3 client whose presigned URLs name the endpoint clients reach; every other call goes
    to the endpoint the server reaches. (A presigned URL is signed for its host: it cannot be
    rewritten afterwards.)"""

    def __init__(self, client: Any, presigner: Any) -> None:
        self._client = client
        self._presigner = presigner

    def generate_presigned_url(self, *args: Any, **kwargs: Any) -> Any:
        return self._presigner.generate_presigned_url(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class PublicPresigningS3Repository(S3ArtifactRepository):
    """MLflow's S3 store, with presigned URLs for the endpoint clients reach."""

    def __init__(self, artifact_uri: str, endpoint: str, **kwargs: Any) -> None:
        super().__init__(artifact_uri, **kwargs)
        self._endpoint = endpoint
        self._presigner: Any = None
        self._lock = threading.Lock()

    def _get_s3_client(self) -> Any:
        client = super()._get_s3_client()  # type: ignore[no-untyped-call]
        with self._lock:
            if self._presigner is None:
                # Signing needs no connection: the same credentials, region and addressing as
                # MLflow's own client, with the public endpoint.
                import boto3
                from botocore.config import Config

                self._presigner = boto3.client(
                    "s3", endpoint_url=self._endpoint, region_name=client.meta.region_name,
                    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
        return _PublicPresigning(client, self._presigner)


def _store_repository(uri: str) -> Any:
    # Imported here: MLflow's registry imports this module while it loads its entry points.
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    endpoint = os.environ.get(ENV_PRESIGN_ENDPOINT)
    if endpoint and urllib.parse.urlparse(uri).scheme == "s3":
        return PublicPresigningS3Repository(uri, endpoint)
    return get_artifact_repository(uri)


class RoutedArtifactRepository(ArtifactRepository, StreamUploadMixin, MultipartUploadMixin):
    """``aie-routed:/``: each experiment's artifacts in the store its tag names (see the module)."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        if urllib.parse.urlparse(artifact_uri).path.strip("/"):
            raise _invalid(f"{artifact_uri}: the routed destination is the root, aie-routed:/")
        self._uris, self._default = stores_from_environment()
        # MLflow's stores (typed Any: MLflow's own methods carry no annotations).
        self._stores: dict[str, Any] = {}
        self._stores_lock = threading.Lock()
        super().__init__(artifact_uri, tracking_uri, registry_uri)

    # -- routing

    def _store(self, name: str) -> Any:
        with self._stores_lock:
            if name not in self._stores:
                self._stores[name] = _store_repository(self._uris[name])
            return self._stores[name]

    def route(self, path: str | None) -> tuple[str, Any]:
        """The store of the experiment that ``path`` starts with, by name and repository."""
        first = (path or "").strip("/").split("/", 1)[0]
        if not _EXPERIMENT_ID.fullmatch(first):
            raise _invalid(f"Artifact path {path!r} names no experiment: proxied artifacts are under "
                           "<experiment id>/")
        name = experiment_tag(first) or self._default
        if name not in self._uris:
            raise _invalid(f"Experiment {first}'s tag {STORE_TAG}={name!r} names none of the artifact stores "
                           f"{sorted(self._uris)}")
        return name, self._store(name)

    # -- ArtifactRepository API

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        self.route(artifact_path)[1].log_artifact(local_file, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self.route(artifact_path)[1].log_artifacts(local_dir, artifact_path)

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        if not (path or "").strip("/"):
            # The root: the experiments that hold artifacts, in any store.
            found = {info.path: info for name in self._uris for info in self._store(name).list_artifacts(None)}
            return [found[key] for key in sorted(found)]
        return list(self.route(path)[1].list_artifacts(path))

    def _is_directory(self, artifact_path: str) -> bool:
        return bool(self.route(artifact_path)[1]._is_directory(artifact_path))

    def download_artifacts(self, artifact_path: str, dst_path: str | None = None) -> str:
        return str(self.route(artifact_path)[1].download_artifacts(artifact_path, dst_path))

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        self.route(remote_file_path)[1]._download_file(remote_file_path, local_path)

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        self.route(artifact_path)[1].delete_artifacts(artifact_path)

    # -- StreamUploadMixin API: SFTP streams; a store that cannot gets a local copy first

    def log_artifact_from_stream(self, stream: BinaryIO, artifact_file_name: str,
                                 artifact_path: str | None = None) -> None:
        store = self.route(artifact_path)[1]
        if isinstance(store, StreamUploadMixin):
            store.log_artifact_from_stream(stream, artifact_file_name, artifact_path)
            return
        with tempfile.TemporaryDirectory() as folder:
            local = os.path.join(folder, posixpath.basename(artifact_file_name))
            with open(local, "wb") as copy:
                shutil.copyfileobj(stream, copy, _CHUNK)
            store.log_artifact(local, artifact_path)

    async def log_artifact_from_async_stream(self, chunks: AsyncIterable[bytes], artifact_file_name: str,
                                             artifact_path: str | None = None) -> None:
        store = (await asyncio.to_thread(self.route, artifact_path))[1]
        if isinstance(store, StreamUploadMixin):
            await store.log_artifact_from_async_stream(chunks, artifact_file_name, artifact_path)
            return
        with tempfile.TemporaryDirectory() as folder:
            local = os.path.join(folder, posixpath.basename(artifact_file_name))
            with open(local, "wb") as copy:
                async for chunk in chunks:
                    await asyncio.to_thread(copy.write, chunk)
            await asyncio.to_thread(store.log_artifact, local, artifact_path)

    # -- MultipartUploadMixin API: S3's presigned parts; other stores say they have none, and
    # MLflow's client then uploads through the server in one request.

    def _multipart(self, artifact_path: str | None) -> Any:
        store = self.route(artifact_path)[1]
        if not isinstance(store, MultipartUploadMixin):
            raise _UNSUPPORTED_MULTIPART()
        return store

    def create_multipart_upload(self, local_file: str, num_parts: int = 1, artifact_path: str | None = None) -> Any:
        return self._multipart(artifact_path).create_multipart_upload(local_file, num_parts, artifact_path)

    def complete_multipart_upload(self, local_file: str, upload_id: str, parts: Any = None,
                                  artifact_path: str | None = None) -> None:
        self._multipart(artifact_path).complete_multipart_upload(local_file, upload_id, parts, artifact_path)

    def abort_multipart_upload(self, local_file: str, upload_id: str, artifact_path: str | None = None) -> None:
        self._multipart(artifact_path).abort_multipart_upload(local_file, upload_id, artifact_path)
