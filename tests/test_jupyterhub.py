"""JupyterHub on the end-to-end stack: each person signs in with their MLflow account and gets a
notebook server of their own.

alice and bob (the stack's mlflow_users with `jupyterhub: true`) sign in through the hub's login
form, start their servers through the hub's API, and run the project's notebook with papermill in
them. alice may log to notebooks-s3 only, bob to notebooks-sftp and is kept out of notebooks-s3.
The runs are by the person; bob is refused alice's runs and artifacts, from his server and from the
controller; a server holds no storage credential and none of another person's files; the hub holds
no Docker socket; an idle server is stopped; a person taken out of the inventory signs in nowhere.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow.tracking import MlflowClient
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import hub_client
from conftest import (
    ARTIFACTS,
    CHROMIUM_FLAGS,
    MLFLOW_URL,
    PORTS,
    PREFIX,
    aie,
    chromium,
    containers,
    require,
    run,
    secrets_in,
    tls_ca,
    trusting,
    write_vars,
)

pytestmark = pytest.mark.docker

HUB = f"https://127.0.0.1:{PORTS['aie_jupyterhub_port']}"
NOTEBOOK = "/home/aie/work/log-a-run.ipynb"
# Each person's experiment (the one they may log to).
EXPERIMENT = {"alice": "notebooks-s3", "bob": "notebooks-sftp"}


def server(person: str) -> str:
    return f"{PREFIX}-jupyterhub-user-{person}"


def password(stack: dict[str, Any], person: str) -> str:
    return (stack["keys"] / "secrets" / "mlflow_users" / person).read_text().split()[0]


def sign_in(stack: dict[str, Any], person: str, secret: str) -> tuple[requests.Session, requests.Response]:
    return hub_client.sign_in(HUB, str(tls_ca(stack["keys"])), person, secret)


def in_server(person: str, *command: str, timeout: float = 600) -> Any:
    return run(["docker", "exec", server(person), *command], timeout=timeout)


def start_server(session: requests.Session, person: str) -> None:
    hub_client.start_server(session, HUB, person)


def in_volume(person: str, name: str) -> str:
    """A file in the person's volume, read with no server running."""
    return run(["docker", "run", "--rm", "-v", f"{server(person)}:/v", "aie/jupyterlab:latest", "cat",
                f"/v/{name}"]).stdout.strip()


@pytest.fixture(scope="module")
def people(stack: dict[str, Any]) -> Iterator[dict[str, dict[str, Any]]]:
    """alice's and bob's servers, started through the hub, and what each measured."""
    found: dict[str, dict[str, Any]] = {}
    for person in EXPERIMENT:
        started = time.perf_counter()
        session, answer = sign_in(stack, person, password(stack, person))
        assert answer.status_code == 302, (answer.status_code, answer.text[:500])
        start_server(session, person)
        seconds = time.perf_counter() - started
        memory = run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", server(person)]).stdout.strip()
        found[person] = {"session": session, "sign_in_to_server_s": round(seconds, 1), "idle_memory": memory}
    print("jupyterhub servers:", json.dumps({person: {key: value for key, value in measured.items()
                                                      if key != "session"} for person, measured in found.items()}))
    yield found


@pytest.fixture(scope="module")
def logged(people: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each person runs the notebook with papermill in their own server: their run's id."""
    runs = {}
    for person, experiment in EXPERIMENT.items():
        done = in_server(person, "papermill", "--no-progress-bar", NOTEBOOK, f"/tmp/{person}.ipynb",
                         "-p", "experiment", experiment)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        printed = in_server(person, "cat", f"/tmp/{person}.ipynb").stdout
        found = re.search(r"run ([0-9a-f]{32}) artifacts at", printed)
        assert found, printed[-2000:]
        runs[person] = found.group(1)
    return runs


def test_a_wrong_password_is_refused_by_the_hub_and_by_mlflow(stack: dict[str, Any]) -> None:
    wrong = password(stack, "alice")[::-1]
    session, answer = sign_in(stack, "alice", wrong)
    assert answer.status_code == 403, answer.status_code
    assert not [cookie for cookie in session.cookies if cookie.name.startswith("jupyterhub-session")]
    assert session.get(f"{HUB}/hub/api/user", timeout=30).status_code == 403
    mlflow = requests.get(f"{MLFLOW_URL}/api/2.0/mlflow/users/get", params={"username": "alice"},
                          auth=("alice", wrong), verify=str(tls_ca(stack["keys"])), timeout=30)
    assert mlflow.status_code == 401
    # carol has an MLflow account but no `jupyterhub: true`.
    _, carol = sign_in(stack, "carol", password(stack, "carol"))
    assert carol.status_code == 403


def test_each_server_has_the_notebooks_its_limits_and_its_own_volume(
        stack: dict[str, Any], people: dict[str, dict[str, Any]]) -> None:
    for person in EXPERIMENT:
        listed = in_server(person, "ls", "/home/aie/work").stdout.split()
        assert {"log-a-run.ipynb", "conv-net-in-keras.ipynb"} <= set(listed), listed
        found = json.loads(run(["docker", "inspect", server(person)]).stdout)[0]
        host = found["HostConfig"]
        assert (host["Memory"], host["CpuQuota"], host["CpuPeriod"]) == (1024 ** 3, 100_000, 100_000)
        assert (host["CapDrop"], host["SecurityOpt"], host["Privileged"]) == (["ALL"], ["no-new-privileges"], False)
        assert found["Config"]["User"] == "10001:10001"
        mounts = {(mount["Type"], mount.get("Name") or mount["Source"], mount["Destination"], mount["RW"])
                  for mount in found["Mounts"]}
        assert (("volume", f"{PREFIX}-jupyterhub-user-{person}", "/home/aie/work", True) in mounts), mounts
        assert [mount for mount in mounts if mount[2] != "/home/aie/work"] == [
            ("bind", mount[1], "/home/aie/shared", False) for mount in mounts if mount[2] == "/home/aie/shared"]
        # The person's own files: written by the server's user, in their volume.
        assert in_server(person, "sh", "-c", f"echo {person} > /home/aie/work/{person}-only.txt").returncode == 0


def test_no_server_holds_a_storage_credential_or_another_persons_password(
        stack: dict[str, Any], people: dict[str, dict[str, Any]]) -> None:
    for person in EXPERIMENT:
        # Nothing in the container's configuration (docker inspect) or environment.
        inspected = run(["docker", "inspect", server(person)]).stdout
        env = in_server(person, "sh", "-c", "env; cat /proc/1/environ").stdout
        assert secrets_in(inspected + env, stack["keys"]) == [], person
        assert not re.search(r"^(AWS_|MLFLOW_S3_|AIE_SFTP|MLFLOW_TRACKING_PASSWORD)", env, re.M), env
        assert in_server(person, "sh", "-c", "ls -A ~/.ssh ~/.aws").returncode != 0
        # The one secret a server holds: the person's own MLflow password, from their sign-in,
        # in the credentials file of its home (in the container, not in the person's volume).
        home = in_server(person, "sh", "-c", "stat -c %a ~/.mlflow/credentials; cat ~/.mlflow/credentials").stdout
        assert home.startswith("600\n") and f"mlflow_tracking_username = {person}" in home, person
        assert secrets_in(home, stack["keys"]) == [f"secrets/mlflow_users/{person}"], person


def test_the_runs_are_by_the_person(people: dict[str, dict[str, Any]], logged: dict[str, str]) -> None:
    client = MlflowClient(tracking_uri=MLFLOW_URL)
    for person, run_id in logged.items():
        found = client.get_run(run_id)
        assert found.info.user_id == person
        experiment = client.get_experiment(found.info.experiment_id)
        assert experiment.name == EXPERIMENT[person]
        assert found.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert [item.path for item in client.list_artifacts(run_id, "summary")] == ["summary/summary.json"]


BOB_READS = r"""
import json, sys
import requests
from mlflow.tracking import MlflowClient
from mlflow.exceptions import MlflowException
run_id, experiment_id = sys.argv[1:]
answers = {}
try:
    MlflowClient().get_run(run_id)
    answers["run"] = "read"
except MlflowException as error:
    answers["run"] = error.error_code
try:
    MlflowClient().download_artifacts(run_id, "summary", "/tmp")
    answers["artifact"] = "read"
except Exception as error:
    answers["artifact"] = "403" if "403" in str(error) else repr(error)[:300]
print(json.dumps(answers))
"""


def test_bob_is_refused_alices_runs_and_artifacts_from_his_server_and_from_the_controller(
        stack: dict[str, Any], logged: dict[str, str]) -> None:
    alice_run = logged["alice"]
    experiment_id = MlflowClient(tracking_uri=MLFLOW_URL).get_run(alice_run).info.experiment_id
    done = in_server("bob", "python", "-c", BOB_READS, alice_run, experiment_id)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"run": "PERMISSION_DENIED", "artifact": "403"}
    bob = ("bob", password(stack, "bob"))
    ca = str(tls_ca(stack["keys"]))
    refused = {
        "run": requests.get(f"{MLFLOW_URL}/api/2.0/mlflow/runs/get", params={"run_id": alice_run}, auth=bob,
                            verify=ca, timeout=30),
        "artifact": requests.get(f"{MLFLOW_URL}/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{alice_run}"
                                 "/artifacts/summary/summary.json", auth=bob, verify=ca, timeout=30),
    }
    assert {what: answer.status_code for what, answer in refused.items()} == {"run": 403, "artifact": 403}


def test_bob_cannot_reach_alices_server_or_files(stack: dict[str, Any], people: dict[str, dict[str, Any]]) -> None:
    # Through the hub: bob's session is not let into alice's server.
    bobs = people["bob"]["session"]
    answer = bobs.get(f"{HUB}/user/alice/api/contents/alice-only.txt", allow_redirects=False, timeout=30)
    assert answer.status_code in (302, 403, 404) and "alice-only" not in answer.text, (answer.status_code,
                                                                                       answer.text[:300])
    # Straight to alice's server on the Docker network, with bob's server's own token.
    alice = json.loads(run(["docker", "inspect", server("alice")]).stdout)[0]
    address = next(iter(alice["NetworkSettings"]["Networks"].values()))["IPAddress"]
    probe = ("import os, urllib.request, urllib.error\n"
             f"request = urllib.request.Request('http://{address}:8888/user/alice/api/contents/alice-only.txt?content=1',"
             " headers={'Authorization': 'token ' + os.environ['JUPYTERHUB_API_TOKEN']})\n"
             "try:\n    print(urllib.request.urlopen(request, timeout=20).status)\n"
             "except urllib.error.HTTPError as error:\n    print(error.code)\n")
    done = in_server("bob", "python", "-c", probe)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in ("302", "403"), done.stdout
    assert "alice-only" not in in_server("bob", "sh", "-c", "ls -A /home/aie/work /home/aie/shared").stdout


HUB_DOCKER = r"""
import json, docker
client = docker.APIClient(base_url="unix:///run/aie-docker/docker.sock", version="auto")
answers = {}
privileged = client.create_host_config(privileged=True)
calls = {"containers": lambda: client.containers(), "mlflow": lambda: client.inspect_container("%(prefix)s-mlflow"),
         "privileged": lambda: client.create_container("%(image)s", name="%(prefix)s-jupyterhub-user-alice2",
                                                       host_config=privileged)}
for what, call in calls.items():
    try:
        call()
        answers[what] = 200
    except docker.errors.APIError as error:
        answers[what] = error.status_code
print(json.dumps(answers))
"""


def test_the_hub_holds_no_docker_socket_and_its_proxy_refuses_the_rest(stack: dict[str, Any]) -> None:
    hub = json.loads(run(["docker", "inspect", f"{PREFIX}-jupyterhub"]).stdout)[0]
    assert "/var/run/docker.sock" not in {mount["Source"] for mount in hub["Mounts"]}
    assert hub["Config"]["User"] == "10001:10001" and hub["HostConfig"]["CapDrop"] == ["ALL"]
    code = HUB_DOCKER % {"prefix": PREFIX, "image": "aie/jupyterlab:latest"}
    done = run(["docker", "exec", f"{PREFIX}-jupyterhub", "python", "-c", code])
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"containers": 403, "mlflow": 403, "privileged": 403}


@contextlib.contextmanager
def browser(env: dict[str, str]) -> Iterator[webdriver.Chrome]:
    """Debian's Chromium, driven by Debian's ChromeDriver through Selenium (a form filled in and
    a button pressed, which Chromium's own --headless flags cannot do), with the tests' flags
    and a new empty profile. env: the browser's environment (a
    home that trusts the deployment's CA, conftest.trusting)."""
    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver_path = shutil.which("chromedriver")
    require(driver_path is not None, "ChromeDriver (Debian's chromium-driver), for the browser tests")
    with tempfile.TemporaryDirectory(prefix="aie-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=ChromeService(str(driver_path), env={**os.environ, **env}))
        try:
            yield driver
        finally:
            driver.quit()


def shown(driver: webdriver.Chrome, text: str, seconds: float = 120) -> None:
    """Wait until the page shows text; else fail with what it shows."""
    try:
        WebDriverWait(driver, seconds).until(lambda page: text in page.find_element(By.TAG_NAME, "body").text)
    except TimeoutException:
        raise AssertionError(f"{driver.current_url} never showed {text!r}: "
                             f"{driver.find_element(By.TAG_NAME, 'body').text[:1000]}") from None


def test_a_browser_signs_in_to_the_hub_and_opens_jupyterlab_and_the_mlflow_ui(
        stack: dict[str, Any], people: dict[str, dict[str, Any]], logged: dict[str, str], tmp_path: Path) -> None:
    """bob, in a browser: the hub's sign-in form, his JupyterLab with the project's notebook, and
    MLflow's UI, where he finds his run (his browser answers MLflow's sign-in prompt: basic auth).
    Screenshots in test-artifacts/. (bob's, not alice's: the idle test waits on alice's server.)"""
    ARTIFACTS.mkdir(exist_ok=True)
    secret = password(stack, "bob")
    with browser(trusting(tls_ca(stack["keys"]), tmp_path / "home")) as driver:
        driver.get(f"{HUB}/hub/login")
        driver.find_element(By.ID, "username_input").send_keys("bob")
        driver.find_element(By.ID, "password_input").send_keys(secret)
        driver.save_screenshot(str(ARTIFACTS / "jupyterhub-sign-in.png"))
        driver.find_element(By.ID, "login_submit").click()
        # The hub starts his server (or finds it running) and opens his JupyterLab.
        WebDriverWait(driver, 180).until(lambda page: "/user/bob/lab" in page.current_url)
        shown(driver, "log-a-run.ipynb")
        driver.save_screenshot(str(ARTIFACTS / "jupyterhub-lab.png"))
        assert "alice-only.txt" not in driver.find_element(By.TAG_NAME, "body").text

        client = MlflowClient(tracking_uri=MLFLOW_URL)
        run_name = client.get_run(logged["bob"]).info.run_name
        experiment = client.get_experiment_by_name(EXPERIMENT["bob"])
        assert experiment is not None
        # What a browser sends once its user has answered the sign-in prompt.
        driver.execute_cdp_cmd("Network.enable", {})
        token = base64.b64encode(f"bob:{secret}".encode()).decode()
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
        driver.get(f"{MLFLOW_URL}/#/experiments/{experiment.experiment_id}/runs/{logged['bob']}")
        shown(driver, str(run_name))
        shown(driver, "Created by")
        driver.save_screenshot(str(ARTIFACTS / "mlflow-as-bob.png"))
        assert re.search(r"Created by\s+bob\b", driver.find_element(By.TAG_NAME, "body").text)
    for shot in ("jupyterhub-sign-in.png", "jupyterhub-lab.png", "mlflow-as-bob.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000, shot


def test_a_removed_person_signs_in_nowhere_and_an_added_one_again(
        stack: dict[str, Any], people: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """bob is taken out of mlflow_users and `aie up` runs: MLflow deletes his account, the hub
    refuses him and forgets his session, his server is stopped, his volume is kept, his generated
    password is removed. Put back, he signs in with a new password (the old one is refused) and
    finds his files, and the stack's other modules find bob as
    the stack's settings have him. (Before the idle test: alice's server idles meanwhile.)"""
    bobs = people["bob"]["session"]
    # A server started now: the idle culler (180 s here) leaves it running through `aie up`.
    bobs.delete(f"{HUB}/hub/api/users/bob/server", timeout=120)
    deadline = time.monotonic() + 120
    while server("bob") in containers(PREFIX):
        assert time.monotonic() < deadline, "bob's server was not stopped"
        time.sleep(1)
    start_server(bobs, "bob")
    assert in_server("bob", "sh", "-c", "echo bob > /home/aie/work/bob-only.txt").returncode == 0
    secret, ca = password(stack, "bob"), str(tls_ca(stack["keys"]))
    settings = json.loads(Path(stack["extra"].removeprefix("@")).read_text())
    settings["mlflow_users"] = [user for user in settings["mlflow_users"] if user["name"] != "bob"]
    up = aie("up", "-e", write_vars(tmp_path / "without-bob.json", settings))
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]

    # His generated password is gone with his account.
    assert not (stack["keys"] / "secrets" / "mlflow_users" / "bob").exists()
    accounts = f"{MLFLOW_URL}/api/2.0/mlflow/users/get"
    admin = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    assert requests.get(accounts, params={"username": "bob"}, auth=admin, verify=ca, timeout=30).status_code == 404
    assert requests.get(accounts, params={"username": "bob"}, auth=("bob", secret), verify=ca,
                        timeout=30).status_code == 401
    _, refused = sign_in(stack, "bob", secret)
    assert refused.status_code == 403
    assert bobs.get(f"{HUB}/hub/api/user", timeout=30).status_code == 403
    assert server("bob") not in containers(PREFIX)
    assert in_volume("bob", "bob-only.txt") == "bob"
    _, alice = sign_in(stack, "alice", password(stack, "alice"))
    assert alice.status_code == 302

    # Put back, he is given a new password: the old one signs in nowhere.
    up = aie("up", "-e", stack["extra"])
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    renewed = password(stack, "bob")
    assert renewed != secret
    assert sign_in(stack, "bob", secret)[1].status_code == 403
    assert requests.get(accounts, params={"username": "bob"}, auth=("bob", secret), verify=ca,
                        timeout=30).status_code == 401
    session, answer = sign_in(stack, "bob", renewed)
    assert answer.status_code == 302, answer.status_code
    start_server(session, "bob")
    assert in_server("bob", "cat", "/home/aie/work/bob-only.txt").stdout.strip() == "bob"


def test_an_idle_server_is_stopped_and_its_files_kept(stack: dict[str, Any], people: dict[str, dict[str, Any]],
                                                      logged: dict[str, str]) -> None:
    # jupyterhub_idle_timeout is 180 s here, checked every 20 s. (Last: alice's server has idled
    # through the tests before, which are bob's.)
    deadline = time.monotonic() + 300
    while server("alice") in run(["docker", "ps", "-a", "--format", "{{.Names}}"]).stdout:
        assert time.monotonic() < deadline, "alice's idle server was not stopped"
        time.sleep(5)
    session = people["alice"]["session"]
    assert not session.get(f"{HUB}/hub/api/users/alice", timeout=30).json()["servers"]
    assert in_volume("alice", "alice-only.txt") == "alice"
