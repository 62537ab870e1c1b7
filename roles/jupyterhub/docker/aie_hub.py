"""aie's JupyterHub: people sign in with their MLflow account, and each gets a notebook server.

The deployment's settings come from a JSON file (AIE_JUPYTERHUB_CONFIG, written by the jupyterhub
role); ``configure`` turns them into JupyterHub's configuration (jupyterhub_config.py calls it).

Sign-in: ``MLflowAuthenticator`` asks MLflow, with the name and password typed in, for that
person's own account (GET /api/2.0/mlflow/users/get, which MLflow answers only to the person
themselves or an admin). MLflow's account store is the one list of passwords: a person removed
from MLflow, or re-passworded, can no longer sign in with the old password. Written by hand:
JupyterHub's authenticators (PAM, OAuth, LDAP, the Native one with its own sign-up) each keep a
second list of accounts, and MLflow's basic-auth has no OAuth provider to point OAuthenticator at.

The hub keeps the password in its encrypted auth_state (JupyterHub's CryptKeeper) only. Each server
asks the hub for its person's auth_state when it starts (aie-notebook-server, with the server's
own API token, allowed that person's auth_state only): the password is in no container's
configuration.

Servers: DockerSpawner, through aie-docker-proxy (roles/backup/docker/docker_proxy.py), which lets
the hub create only these servers, as configured here (image, user, no capability, the person's
volume, limits): the hub never holds the Docker socket.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import quote

from jupyterhub.auth import Authenticator
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import Unicode

# Where a server finds the deployment's CA (written from AIE_CA_PEM by aie-notebook-server).
SERVER_CA = "/tmp/aie-ca.pem"


class MLflowAuthenticator(Authenticator):  # type: ignore[misc]
    """Signs people in with their MLflow account; keeps the password in the encrypted auth_state."""

    mlflow_url = Unicode(help="MLflow's address, as the hub reaches it").tag(config=True)
    ca_file = Unicode(help="The CA bundle MLflow's certificate is checked against").tag(config=True)

    async def signs_in(self, username: str, password: str) -> bool:
        """Whether MLflow accepts this name and password (its answer to the person's own account)."""
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        request = HTTPRequest(
            f"{self.mlflow_url}/api/2.0/mlflow/users/get?username={quote(username)}",
            headers={"Authorization": f"Basic {token}"}, ca_certs=self.ca_file or None, request_timeout=30)
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code not in (200, 401, 403):
            self.log.error("MLflow answered %s to the sign-in of %s", response.code, username)
        return bool(response.code == 200)

    async def authenticate(self, handler: Any, data: dict[str, str]) -> dict[str, Any] | None:
        username = self.normalize_username(data.get("username", ""))
        password = data.get("password", "")
        if not username or not password or not await self.signs_in(username, password):
            self.log.warning("Sign-in refused for %r", username)
            return None
        return {"name": username, "auth_state": {"mlflow_password": password}}

    def add_user(self, user: Any) -> None:
        """Called at each start for every person in the hub's database: one no longer among the
        people is refused, and the hub deletes them (delete_invalid_users) with their tokens, their
        auth_state and their server's record. JupyterHub would otherwise let anyone once allowed
        sign in again (allow_existing_users)."""
        if user.name not in self.allowed_users:
            raise ValueError(f"{user.name} is no longer one of the people")
        super().add_user(user)

    async def refresh_user(self, user: Any, handler: Any = None) -> bool | dict[str, Any]:
        """Before each spawn (refresh_pre_spawn) and now and then: the password still signs in to MLflow."""
        state = await user.get_auth_state()
        if not state or not await self.signs_in(user.name, state.get("mlflow_password", "")):
            return False
        return True


def configure(c: Any, settings: dict[str, Any]) -> None:
    """JupyterHub's configuration from the deployment's settings."""
    hub = settings["hub"]
    c.JupyterHub.bind_url = f"https://:{hub['port']}"
    c.JupyterHub.ssl_cert = hub["certificate"]
    c.JupyterHub.ssl_key = hub["key"]
    # The servers reach the hub's API on the deployment's network, by the hub container's name.
    c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
    c.JupyterHub.hub_connect_url = f"http://{hub['container']}:8081"
    c.JupyterHub.db_url = f"sqlite:///{hub['data']}/jupyterhub.sqlite"
    c.JupyterHub.cookie_secret_file = f"{hub['data']}/jupyterhub_cookie_secret"
    c.ConfigurableHTTPProxy.pid_file = "/tmp/jupyterhub-proxy.pid"
    c.JupyterHub.cleanup_servers = False

    c.JupyterHub.authenticator_class = MLflowAuthenticator
    c.MLflowAuthenticator.mlflow_url = settings["mlflow"]["url"]
    c.MLflowAuthenticator.ca_file = settings["mlflow"]["ca_file"]
    c.Authenticator.allowed_users = set(settings["people"])
    c.Authenticator.allow_existing_users = False
    c.Authenticator.delete_invalid_users = True
    c.Authenticator.admin_users = set()
    c.Authenticator.enable_auth_state = True
    c.Authenticator.refresh_pre_spawn = True
    c.Authenticator.auth_refresh_age = 300
    with open(hub["crypt_key_file"]) as key:
        c.CryptKeeper.keys = [key.read().strip().encode()]

    spawn = settings["spawn"]
    c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
    c.DockerSpawner.client_kwargs = {"base_url": f"unix://{spawn['docker_socket']}"}
    c.DockerSpawner.image = spawn["image"]
    # The image is built on the host by the deployment: never pulled, not even looked up.
    c.DockerSpawner.pull_policy = "skip"
    c.DockerSpawner.remove = True
    c.DockerSpawner.prefix = spawn["prefix"]
    c.DockerSpawner.name_template = "{prefix}-{username}"
    # nocopy: Docker would give a new volume the owner of the image's folder (root) on first use;
    # the jupyterhub role has given it to the notebook user.
    volumes: dict[str, Any] = {spawn["prefix"] + "-{username}": {"bind": spawn["home"], "mode": "rw,nocopy"}}
    if spawn.get("shared"):
        volumes[spawn["shared"]["source"]] = {"bind": spawn["shared"]["target"], "mode": "ro"}
    c.DockerSpawner.volumes = volumes
    c.DockerSpawner.notebook_dir = spawn["home"]
    c.DockerSpawner.network_name = spawn["network"]
    c.DockerSpawner.use_internal_ip = True
    c.DockerSpawner.mem_limit = int(spawn["memory"])
    c.DockerSpawner.cpu_limit = float(spawn["cpus"])
    c.DockerSpawner.extra_create_kwargs = {"user": spawn["user"]}
    c.DockerSpawner.extra_host_config = {
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "pids_limit": spawn["pids_limit"],
        "log_config": {"type": "json-file", "config": {"max-size": spawn["log_max_size"],
                                                        "max-file": str(spawn["log_max_files"])}}}
    c.DockerSpawner.cmd = ["aie-notebook-server"]
    c.DockerSpawner.http_timeout = spawn["start_timeout"]
    c.DockerSpawner.start_timeout = spawn["start_timeout"]
    with open(settings["mlflow"]["ca_file"]) as ca:
        ca_pem = ca.read()
    c.Spawner.environment = {
        # The notebook user has no entry in the image's /etc/passwd: a home in the container, where
        # aie-notebook-server writes the person's MLflow credentials (~/.mlflow/credentials).
        "HOME": "/tmp/home", "USER": "aie", "LOGNAME": "aie",
        "MLFLOW_TRACKING_URI": settings["mlflow"]["url"],
        "MLFLOW_TRACKING_SERVER_CERT_PATH": SERVER_CA,
        "REQUESTS_CA_BUNDLE": SERVER_CA,
        "AIE_CA_PEM": ca_pem,
        "AIE_SHARED_NOTEBOOKS": (spawn.get("shared") or {}).get("target", ""),
    }
    # A person may read their own auth_state (their MLflow password), and so may their server's
    # token (JUPYTERHUB_API_TOKEN): aie-notebook-server reads it from the hub when it starts.
    c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", "read:users:name!user",
                                     "admin:auth_state!user"]

    cull = settings["cull"]
    c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self", "admin:auth_state!user"]},
                               {"name": "idle-culler", "services": ["idle-culler"],
                                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]}]
    c.JupyterHub.services = [{
        "name": "idle-culler",
        "command": ["python", "-m", "jupyterhub_idle_culler", f"--timeout={cull['timeout']}",
                    f"--cull-every={cull['every']}"],
    }]


def load(path: str | None = None) -> dict[str, Any]:
    with open(path or os.environ["AIE_JUPYTERHUB_CONFIG"]) as settings:
        loaded: dict[str, Any] = json.load(settings)
    return loaded
