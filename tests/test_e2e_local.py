"""The single-host stack, deployed for real on this machine's Docker engine.

Deploys with `aie up` under a prefix and ports of its own (so a user's stack is left
alone), logs runs from inside the JupyterLab container and checks where everything landed.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from mlflow.tracking import MlflowClient

from conftest import (
    ENGINE,
    ENGINE_SETTINGS,
    MLFLOW_URL,
    PORTS,
    PREFIX,
    aie,
    ansible_playbook,
    assert_unprivileged,
    behind_a_context,
    bounded_load,
    containers,
    generated_secrets,
    http_status,
    jupyter_exec,
    jupyterlab_uid,
    mlflow_status,
    run,
    s3_client,
    secrets_in,
    tls_ca,
    write_vars,
)

LOG_RUNS = r"""
import hashlib, json, os, tempfile
import mlflow
out = {}
for name in ("notebooks-sftp", "notebooks-s3"):
    mlflow.set_experiment(name)
    with mlflow.start_run() as run:
        mlflow.log_param("learning_rate", 0.01)
        for step in range(3):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        path = os.path.join(tempfile.mkdtemp(), "weights.bin")
        data = os.urandom(300_000)
        with open(path, "wb") as handle:
            handle.write(data)
        mlflow.log_artifact(path, artifact_path="model")
        out[name] = {"run_id": run.info.run_id, "sha256": hashlib.sha256(data).hexdigest(),
                     "artifact_uri": mlflow.get_artifact_uri()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def logged(stack: dict[str, Any]) -> dict[str, Any]:
    result = jupyter_exec("python", "-c", LOG_RUNS)
    assert result.returncode == 0, result.stderr[-3000:]
    logged: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return logged


def test_every_container_runs(stack: dict[str, Any]) -> None:
    # Serving joins once a model is registered (tests/test_notebook_e2e.py may have run first).
    # The people's notebook servers come and go (tests/test_jupyterhub.py).
    names = {name for name in containers(PREFIX) if not name.startswith(f"{PREFIX}-jupyterhub-user-")}
    names -= {f"{PREFIX}-serving"}
    assert names == {f"{PREFIX}-{name}" for name in ("mlflow", "sftp", "s3", "jupyterlab", "backup", "docker-proxy",
                                                     "jupyterhub", "jupyterhub-docker-proxy")}
    # The S3 store runs the engine asked for, the default one unless AIE_TEST_S3_ENGINE names
    # another, and its volume records it.
    label = run(["docker", "volume", "inspect", "-f", '{{index .Labels "aie.s3-engine"}}', f"{PREFIX}-minio-data"])
    assert label.stdout.strip() == ENGINE, label.stdout + label.stderr


def stored_at(entry: dict[str, Any]) -> str:
    """Where the MLflow server put a run's artifacts in its experiment's store: under
    by-experiment-id/, the run's path behind mlflow-artifacts:/ (the client logged through it)."""
    scheme, path = entry["artifact_uri"].split(":", 1)
    assert scheme == "mlflow-artifacts", entry["artifact_uri"]
    assert path.lstrip("/").split("/")[1:] == [entry["run_id"], "artifacts"], entry["artifact_uri"]
    return "by-experiment-id/" + path.lstrip("/")


def test_sftp_artifact_is_in_the_sftp_volume(logged: dict[str, Any]) -> None:
    entry = logged["notebooks-sftp"]
    # Read through a throwaway container on the volume itself, not through the server.
    path = f"/data/{stored_at(entry)}/model/weights.bin"
    result = run(
        [
            "docker",
            "run",
            "--rm",
            "-v",
            f"{PREFIX}-sftp-data:/data:ro",
            "--entrypoint",
            "sha256sum",
            "aie/common:latest",
            path,
        ],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == entry["sha256"]


def test_s3_artifact_is_in_the_bucket(stack: dict[str, Any], logged: dict[str, Any]) -> None:
    entry = logged["notebooks-s3"]
    s3 = s3_client(stack["keys"])
    key = f"{stored_at(entry)}/model/weights.bin"
    body = s3.get_object(Bucket="ai-models", Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == entry["sha256"]


def test_mlflow_returns_the_runs_and_metrics(logged: dict[str, Any]) -> None:
    client = MlflowClient(tracking_uri=MLFLOW_URL)
    for name, entry in logged.items():
        run_data = client.get_run(entry["run_id"])
        experiment = client.get_experiment(run_data.info.experiment_id)
        assert experiment.name == name
        assert run_data.data.params == {"learning_rate": "0.01"}
        history = client.get_metric_history(entry["run_id"], "loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2]
        assert run_data.data.metrics["loss"] == pytest.approx(1 / 3)


def test_mlflow_answers_only_its_accounts(stack: dict[str, Any], logged: dict[str, Any]) -> None:
    secrets: Path = stack["keys"] / "secrets"
    password = {name: (secrets / f"mlflow_{name}_password").read_text().split()[0]
                for name in ("admin", "jupyterlab", "serving")}
    alice = ("alice", (secrets / "mlflow_users" / "alice").read_text().split()[0])
    search = "/api/2.0/mlflow/experiments/search?max_results=10"
    ids = {name: MlflowClient(tracking_uri=MLFLOW_URL)
           .get_experiment_by_name(name).experiment_id for name in ("notebooks-sftp", "notebooks-s3")}
    answers = {
        # Health stays open (probes), everything else asks who is calling.
        "health, no credentials": mlflow_status("/health", None),
        "search, no credentials": mlflow_status(search, None),
        "search, admin with a wrong password": mlflow_status(search, ("admin", password["admin"] + "-wrong")),
        "search, serving": mlflow_status(search, ("serving", password["serving"])),
        "new run, serving": mlflow_status("/api/2.0/mlflow/runs/create", ("serving", password["serving"]),
                                        {"experiment_id": ids["notebooks-s3"]}),
        "new account, jupyterlab": mlflow_status("/api/2.0/mlflow/users/create", ("jupyterlab", password["jupyterlab"]),
                                               {"username": "mallory", "password": "M" * 20}),
        "new run in notebooks-s3, alice": mlflow_status("/api/2.0/mlflow/runs/create", alice,
                                                      {"experiment_id": ids["notebooks-s3"]}),
        "new run in notebooks-sftp, alice": mlflow_status("/api/2.0/mlflow/runs/create", alice,
                                                        {"experiment_id": ids["notebooks-sftp"]}),
    }
    assert answers == {
        "health, no credentials": 200,
        "search, no credentials": 401,
        "search, admin with a wrong password": 401,
        "search, serving": 200,
        "new run, serving": 403,
        "new account, jupyterlab": 403,
        "new run in notebooks-s3, alice": 200,
        "new run in notebooks-sftp, alice": 403,
    }


def another_ca(path: Path, subject: Any) -> Path:
    """Someone else's CA under the deployment CA's name (subject), with another key: a client that
    trusts only it must refuse the deployment's certificates."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_http_services_speak_only_https_with_the_deployments_ca(
    stack: dict[str, Any], logged: dict[str, Any], tmp_path: Path
) -> None:
    from cryptography import x509

    keys: Path = stack["keys"]
    other = another_ca(tmp_path / "other-ca.pem", x509.load_pem_x509_certificate(tls_ca(keys).read_bytes()).subject)
    answers = {}
    for service, path in (("mlflow", "/health"), ("jupyterlab", "/api"), ("s3", "/"), ("jupyterhub", "/hub/health")):
        port = PORTS[f"aie_{service}_port"]
        # A client without the CA (the system's authorities only) refuses the certificate.
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", timeout=30)  # noqa: S310
        answers[service] = {"https with the CA": http_status(f"https://127.0.0.1:{port}{path}", cafile=tls_ca(keys)),
                            "https with another CA": http_status(f"https://127.0.0.1:{port}{path}", cafile=other),
                            "plain http": http_status(f"http://127.0.0.1:{port}{path}")}
    # (S3 answers an anonymous listing with no bucket, or refuses it: an S3 answer either way.)
    answered = {"mlflow": {200}, "jupyterlab": {200}, "s3": {200, 403}, "jupyterhub": {200}}
    assert all(answers[name]["https with the CA"] in answered[name] and answers[name]["plain http"] == 0
               and answers[name]["https with another CA"] == 0 for name in answered), answers
    # The host's certificate names what clients use (the containers' names on the Docker network,
    # the published address on loopback) and nothing else: not this machine's address on its
    # network, which a laptop changes with every Wi-Fi. It is signed by the CA, whose key stays in
    # the secrets folder.
    certificate = x509.load_pem_x509_certificate((keys / "tls" / "localhost.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {
        f"{PREFIX}-mlflow", f"{PREFIX}-jupyterlab", f"{PREFIX}-jupyterhub", f"{PREFIX}-serving", f"{PREFIX}-s3",
        "localhost"}
    assert {str(address) for address in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    # MLflow answers the same names only.
    command = run(["docker", "inspect", "-f", "{{json .Config.Cmd}}", f"{PREFIX}-mlflow"], timeout=60).stdout
    (allowed,) = [arg.split("=", 1)[1] for arg in json.loads(command) if arg.startswith("--allowed-hosts=")]
    assert {name.removesuffix(":*") for name in allowed.split(",")} == {f"{PREFIX}-mlflow", "localhost", "127.0.0.1"}
    ca = x509.load_pem_x509_certificate(tls_ca(keys).read_bytes())
    certificate.verify_directly_issued_by(ca)
    assert (keys / "secrets" / "tls_ca.key").stat().st_mode & 0o077 == 0
    assert (keys / "tls" / "localhost.key").stat().st_mode & 0o077 == 0
    # Inside the clients' containers, MLflow and S3 are reached over HTTPS with that CA.
    names = ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_S3_ENDPOINT_URL", "AWS_CA_BUNDLE"]
    env = run(["docker", "exec", f"{PREFIX}-jupyterlab", "printenv", *names], timeout=60).stdout.split()
    assert env == [f"https://{PREFIX}-mlflow:5000", "/etc/aie/tls/ca.pem", f"https://{PREFIX}-s3:9000",
                   "/etc/aie/tls/ca.pem"]


def s3_answer(call: Any) -> str:
    """'ok', or the S3 error code of the refusal."""
    try:
        call()
    except ClientError as refused:
        return str(refused.response["Error"]["Code"])
    return "ok"


def test_s3_client_account_reaches_only_the_artifact_bucket(stack: dict[str, Any], logged: dict[str, Any]) -> None:
    server, client = s3_client(stack["keys"], "s3"), s3_client(stack["keys"])
    other, mine = "aie-e2e-other", f"{stored_at(logged['notebooks-s3'])}/model/weights.bin"
    server.create_bucket(Bucket=other)
    server.put_object(Bucket=other, Key="private.bin", Body=b"private")
    try:
        answers = {
            "read a logged artifact": s3_answer(lambda: client.head_object(Bucket="ai-models", Key=mine)),
            "write an object": s3_answer(lambda: client.put_object(Bucket="ai-models", Key="client/probe", Body=b"x")),
            "delete it": s3_answer(lambda: client.delete_object(Bucket="ai-models", Key="client/probe")),
            "create a bucket": s3_answer(lambda: client.create_bucket(Bucket="aie-e2e-new")),
            "delete the artifact bucket": s3_answer(lambda: client.delete_bucket(Bucket="ai-models")),
            "change the bucket's policy": s3_answer(lambda: client.delete_bucket_policy(Bucket="ai-models")),
            "list another bucket": s3_answer(lambda: client.list_objects_v2(Bucket=other)),
            "read another bucket": s3_answer(lambda: client.get_object(Bucket=other, Key="private.bin")),
            "write another bucket": s3_answer(lambda: client.put_object(Bucket=other, Key="x", Body=b"x")),
        }
    finally:
        server.delete_object(Bucket=other, Key="private.bin")
        server.delete_bucket(Bucket=other)
    assert answers == {
        "read a logged artifact": "ok",
        "write an object": "ok",
        "delete it": "ok",
        "create a bucket": "AccessDenied",
        "delete the artifact bucket": "AccessDenied",
        "change the bucket's policy": "AccessDenied",
        "list another bucket": "AccessDenied",
        "read another bucket": "AccessDenied",
        "write another bucket": "AccessDenied",
    }
    # The server's keys are in no client container; the client account's are, in boto3's
    # credentials file in the home of the service's user, readable by that user only.
    secrets = stack["keys"] / "secrets"
    server_key, client_key = ((secrets / f"{name}_access_key").read_text().split()[0] for name in ("s3", "s3_client"))
    for service in ("mlflow", "jupyterlab"):
        uid = jupyterlab_uid() if service == "jupyterlab" else 10001
        seen = run(["docker", "exec", "-u", str(uid), f"{PREFIX}-{service}", "sh", "-c",
                    "stat -c %a:%u /home/aie/.aws/credentials && cat /home/aie/.aws/credentials"])
        assert seen.returncode == 0, (service, seen.stderr)
        assert seen.stdout.startswith("400:"), (service, seen.stdout.splitlines()[0])
        assert f"aws_access_key_id = {client_key}" in seen.stdout and server_key not in seen.stdout, service


def test_no_container_configuration_holds_a_secret(stack: dict[str, Any]) -> None:
    keys: Path = stack["keys"]
    # What the test looks for: the admin's, the users', S3's, Jupyter's, the Flask key, the
    # passphrase, and the private keys.
    assert {"secrets/mlflow_admin_password", "secrets/s3_secret_key", "secrets/jupyterlab_token",
            "secrets/mlflow_kek_passphrase", "secrets/mlflow_users/alice", "sftp_client_ed25519"} <= set(
                generated_secrets(keys)), sorted(generated_secrets(keys))
    names = containers(PREFIX)
    assert {f"{PREFIX}-{service}" for service in ("mlflow", "jupyterlab", "sftp", "s3", "backup")} <= set(names)
    for name in names:
        inspected = run(["docker", "inspect", name])
        assert inspected.returncode == 0, inspected.stderr
        assert secrets_in(inspected.stdout, keys) == [], name
    # MLflow's server holds its Flask key and the passphrase (from files, in its environment
    # only), and not the admin password, which only the one-off step that made the account had.
    # The server's first process, after tini (whose environment is the container's).
    processes = run(["docker", "top", f"{PREFIX}-mlflow", "-eo", "pid,uid,args"]).stdout.splitlines()[1:]
    server = min(int(line.split()[0]) for line in processes
                 if line.split()[1] == "10001" and "mlflow server" in line and "tini" not in line)
    environ = Path(f"/proc/{server}/environ").read_bytes().replace(b"\0", b"\n").decode()
    assert secrets_in(environ, keys) == ["secrets/mlflow_kek_passphrase", "secrets/mlflow_secret_key"]


# Capabilities each container may hold (group_vars/all/services.yml, aie_container_security),
# and the bit of each in /proc/<pid>/status. MLflow, JupyterLab and the rgw engine hold none.
PYTHON_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL"}
SSHD_CAPS = PYTHON_CAPS | {"SYS_CHROOT", "NET_BIND_SERVICE"}
CONFINED = {"mlflow": set(), "jupyterlab": set(), "sftp": SSHD_CAPS, "s3": set() if ENGINE == "rgw" else PYTHON_CAPS,
            "backup": PYTHON_CAPS - {"KILL"} | {"DAC_READ_SEARCH", "FSETID"}, "docker-proxy": set(),
            "jupyterhub": set(), "jupyterhub-docker-proxy": set()}
# Containers whose root file system is read-only (the rgw engine's S3 server; MinIO's is not).
READ_ONLY = {"mlflow", "sftp", "docker-proxy", "jupyterhub", "jupyterhub-docker-proxy"} | (
    {"s3"} if ENGINE == "rgw" else set())
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
            "SETUID": 7, "NET_BIND_SERVICE": 10, "SYS_CHROOT": 18}


def test_every_container_is_confined(stack: dict[str, Any]) -> None:
    for service, allowed in CONFINED.items():
        name = f"{PREFIX}-{service}"
        host = json.loads(run(["docker", "inspect", "--format", "{{json .HostConfig}}", name]).stdout)
        assert host["CapDrop"] == ["ALL"], name
        assert {cap.removeprefix("CAP_") for cap in host["CapAdd"] or []} == allowed, name
        assert "no-new-privileges" in host["SecurityOpt"], name
        assert host["Memory"] > 0, name
        # A process limit, and a log that rotates (group_vars/all/services.yml).
        assert host["PidsLimit"] == 4096, name
        assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}, name
        assert host["ReadonlyRootfs"] == (service in READ_ONLY), name
        if service in READ_ONLY:
            write = run(["docker", "exec", name, "touch", "/usr/aie-probe"])
            assert write.returncode != 0 and "Read-only file system" in write.stderr, (name, write.stderr)
        # What every process of the container holds, whatever it does at run time.
        states = run(["docker", "exec", name, "sh", "-c", "cat /proc/[0-9]*/status"]).stdout
        mask = sum(1 << CAP_BITS[cap] for cap in allowed)
        held = [int(line.split()[1], 16) for line in states.splitlines() if line.startswith("CapEff:")]
        assert held and all(caps & ~mask == 0 for caps in held), (name, [hex(caps) for caps in held])
    # MLflow runs as a user of its own from its first process (tini) on, with no capability.
    assert set(assert_unprivileged(f"{PREFIX}-mlflow").values()) == {"10001"}
    # Its config is a copy of its user's, which it cannot change.
    config = run(["docker", "exec", f"{PREFIX}-mlflow", "sh", "-c",
                  "stat -c '%u %a' /etc/aie /etc/aie/tls/key.pem; touch /etc/aie/probe"])
    assert config.stdout.split("\n")[:2] == ["10001 700", "10001 400"], config.stdout
    assert "Read-only file system" in config.stderr, config.stderr
    # JupyterLab never runs as root, whoever owns the notebooks folder (root's, when the tests run
    # as root): it runs as its owner, or as the service user given write access to it.
    notebook_users = set(assert_unprivileged(f"{PREFIX}-jupyterlab").values())
    assert notebook_users == {str(jupyterlab_uid())} and jupyterlab_uid() != 0, notebook_users
    probe = f"/home/aie/work/.aie-write-probe-{uuid.uuid4().hex[:8]}"
    written = jupyter_exec("sh", "-c", f"echo saved > {probe} && cat {probe} && rm {probe}")
    assert written.returncode == 0 and written.stdout.strip() == "saved", written.stderr
    # The S3 server's container runs as ceph (64045), its three daemons included, with no
    # capability at all.
    if ENGINE == "rgw":
        assert set(assert_unprivileged(f"{PREFIX}-s3").values()) == {"64045"}
        daemons = run(["docker", "exec", f"{PREFIX}-s3", "sh", "-c",
                       "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline | cut -d' ' -f1; done"]).stdout.split()
        assert {"ceph-mon", "ceph-osd", "radosgw"} <= set(daemons), daemons


# Calls to the Docker proxy from the backup container: method, path, body; the status printed.
PROXY_CALLS = """
import http.client, json, socket, sys
def call(method, path, body=None):
    connection = http.client.HTTPConnection("localhost", timeout=60)
    connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.sock.connect("/run/aie-docker/docker.sock")
    connection.request(method, path, body=json.dumps(body) if body is not None else None)
    response = connection.getresponse()
    return response.status, response.read()
answers = {}
for name, (method, path, body) in json.loads(sys.argv[1]).items():
    status, answer = call(method, path, body)
    answers[name] = [status, sorted(json.loads(answer)) if status == 200 else None]
print(json.dumps(answers))
"""


def test_the_backups_reach_docker_only_through_a_proxy_that_allows_their_calls(stack: dict[str, Any]) -> None:
    mounts = json.loads(run(["docker", "inspect", "-f", "{{json .Mounts}}", f"{PREFIX}-backup"]).stdout)
    assert "/var/run/docker.sock" not in {mount["Source"] for mount in mounts}, mounts
    exec_body = {"Cmd": ["id"], "User": "root", "AttachStdout": True, "AttachStderr": True}
    calls = {
        "the object store's state": ["GET", f"/containers/{PREFIX}-s3/json", None],
        "JupyterLab's configuration": ["GET", f"/containers/{PREFIX}-jupyterlab/json", None],
        "a new container": ["POST", "/containers/create",
                            {"Image": "aie/backup:latest", "HostConfig": {"Privileged": True}}],
        "a command in the object store": ["POST", f"/containers/{PREFIX}-s3/exec", exec_body],
        "the host's images": ["GET", "/images/json", None],
        "stopping MLflow": ["POST", f"/containers/{PREFIX}-mlflow/stop", None],
    }
    done = run(["docker", "exec", f"{PREFIX}-backup", "python3", "-c", PROXY_CALLS, json.dumps(calls)])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "the object store's state": [200, ["State"]],
        "JupyterLab's configuration": [403, None],
        "a new container": [403, None],
        "a command in the object store": [403, None],
        "the host's images": [403, None],
        "stopping MLflow": [403, None],
    }
    assert f"{PREFIX}-mlflow" in containers(PREFIX)


def test_status_reports_every_service_healthy(stack: dict[str, Any]) -> None:
    status = aie("status", "-e", stack["extra"], timeout=300)
    assert status.returncode == 0, status.stdout + status.stderr
    for service, port in (("mlflow", 15500), ("sftp", 12222), ("s3", 19000), ("jupyterlab", 18888)):
        assert re.search(rf"^{service}\s+healthy\s+\S+:{port}", status.stdout, re.M), status.stdout
    # The latest backup (none yet, or the drill's when its module ran first) and the certificate,
    # issued for aie_tls_days (397).
    assert re.search(r"^backup\s+ok\s+(no snapshot yet|snapshot [0-9a-f]{8}, \d+ (min|h) ago)\s+\(localhost; "
                     r"schedule 17 3 \* \* \*\)$", status.stdout, re.M), status.stdout
    days = re.search(r"^certificate\s+ok\s+valid until \d{4}-\d\d-\d\d \((\d+) days\)\s+\(localhost\)$",
                     status.stdout, re.M)
    assert days and 390 <= int(days.group(1)) <= 397, status.stdout
    secrets: Path = stack["keys"] / "secrets"
    assert f"MLflow admin password: in {secrets / 'mlflow_admin_password'}" in status.stdout
    # `aie status` shows the JupyterLab token (to open it), and no other secret.
    for name in ("jupyterlab_token", "mlflow_admin_password", "mlflow_jupyterlab_password", "mlflow_secret_key"):
        secret = (secrets / name).read_text().split()[0]
        shown = stack["first_up"].stdout + stack["first_up"].stderr + (status.stdout if "mlflow" in name else "")
        assert secret not in shown, name


def test_status_check_names_a_backup_overdue_and_a_certificate_to_renew(stack: dict[str, Any]) -> None:
    quiet = aie("status", "--check", "-e", stack["extra"], timeout=300)
    assert quiet.returncode == 0 and quiet.stdout == "", quiet.stdout + quiet.stderr
    # Judged by a schedule of every minute, backups are overdue two minutes after the latest
    # snapshot (or the repository's making); a renewal window longer than the certificate's life
    # puts it inside.
    strict = ["-e", stack["extra"], "-e", '{"aie_backup_schedule": "* * * * *", "aie_tls_renew_days": 400}']
    deadline = time.monotonic() + 180
    while True:
        found = aie("status", "--check", *strict, timeout=300)
        if "OVERDUE" in found.stdout or time.monotonic() > deadline:
            break
        time.sleep(15)
    assert found.returncode == 1, found.stdout + found.stderr
    lines = found.stdout.strip().splitlines()
    assert len(lines) == 2, found.stdout
    assert re.match(r"backup\s+OVERDUE\s+.*\(localhost; schedule \* \* \* \* \*\): none for more than twice",
                    lines[0]), lines
    assert re.match(r"certificate\s+RENEW\s+valid until .*\(localhost\): within 400 days of its expiry",
                    lines[1]), lines
    # Plain `aie status` still lists everything and fails only for a service down.
    listed = aie("status", *strict, timeout=300)
    assert listed.returncode == 0 and "OVERDUE" in listed.stdout and "RENEW" in listed.stdout, listed.stdout


def test_switching_mlflow_to_postgresql_on_existing_runs_is_refused(stack: dict[str, Any]) -> None:
    refused = aie("up", "-e", stack["extra"], "-e", "aie_mlflow_backend=postgresql", timeout=600)
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert f"MLflow's runs are in SQLite (the container {PREFIX}-mlflow runs on it), not in PostgreSQL" in last
    # Nothing changed: no database container, MLflow still on SQLite.
    assert f"{PREFIX}-database" not in containers(PREFIX)
    args = run(["docker", "inspect", "-f", "{{json .Args}}", f"{PREFIX}-mlflow"], timeout=60).stdout
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in args


def test_64_clients_log_metrics_with_no_error_on_sqlite(stack: dict[str, Any]) -> None:
    bounded_load("sqlite", MLFLOW_URL, stack["keys"])


def test_second_up_changes_nothing(stack: dict[str, Any], logged: dict[str, Any]) -> None:
    again = aie("up", "-e", stack["extra"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "changed=0" in again.stdout, again.stdout[-3000:]
    # Nor did it take from JupyterLab the write access its start gave it to a notebooks folder
    # of root's (an ACL, which a mode set on the folder would undo).
    written = jupyter_exec("sh", "-c", "touch /home/aie/work/.aie-probe && rm /home/aie/work/.aie-probe")
    assert written.returncode == 0, written.stderr


def test_check_mode_on_the_deployed_stack_changes_nothing(stack: dict[str, Any]) -> None:
    check = aie("up", "--check", "-e", stack["extra"])
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert "changed=0" in check.stdout, check.stdout[-3000:]


def test_down_keeps_the_data_volumes(stack: dict[str, Any], logged: dict[str, Any]) -> None:
    down = aie("down", "-e", stack["extra"], timeout=600)
    assert down.returncode == 0, down.stdout + down.stderr
    assert containers(PREFIX) == []
    volumes = run(["docker", "volume", "ls", "--format", "{{.Name}}"]).stdout.split()
    assert {f"{PREFIX}-{v}" for v in ("mlflow-data", "sftp-data", "minio-data")} <= set(volumes)
    # And the stack comes back, its containers re-created, with everything logged before:
    # runs, and artifacts in both stores. Brought back by ansible-playbook itself, verbose: what
    # it prints of every task that creates a container holds no secret.
    up = ansible_playbook("-v", "-i", "inventory/local", "site.yml", "-e", stack["extra"], timeout=1800)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert "Run the container" in up.stdout and "-mlflow" in up.stdout
    assert secrets_in(up.stdout + up.stderr, stack["keys"]) == []
    client = MlflowClient(tracking_uri=MLFLOW_URL)
    assert client.get_run(logged["notebooks-sftp"]["run_id"]).data.params == {"learning_rate": "0.01"}
    test_s3_artifact_is_in_the_bucket(stack, logged)
    test_sftp_artifact_is_in_the_sftp_volume(logged)


def test_keys_are_generated_and_not_tracked(stack: dict[str, Any]) -> None:
    keys: Path = stack["keys"]
    for name in ("sftp_client_ed25519", "sftp_host_ed25519_key"):
        assert (keys / name).stat().st_mode & 0o077 == 0
    known = (keys / "known_hosts").read_text()
    host_key = (keys / "sftp_host_ed25519_key.pub").read_text().split()[1]
    assert f"{PREFIX}-sftp" in known and f"[localhost]:{PORTS['aie_sftp_port']}" in known and host_key in known
    tracked = run(["git", "ls-files", "files/keys"]).stdout.split()
    assert tracked in ([], ["files/keys/README.md"])


def test_check_mode_on_a_new_deployment_changes_nothing(stack: dict[str, Any], tmp_path: Path) -> None:
    # A deployment under another prefix, in check mode: the keys, volumes and containers it
    # would create are reported, and none of them is created. The engine is reached as on a Mac
    # with Docker Desktop: only through the docker CLI's context, at a socket of its own.
    settings = {"aie_name_prefix": "aiecheck", "aie_keys_dir": str(tmp_path / "keys"), **ENGINE_SETTINGS,
                **{name: port + 1 for name, port in PORTS.items()}}
    prefix, env = behind_a_context(tmp_path)
    check = run([*prefix, sys.executable, "-m", "aie.cli", "up", "--check", "-e",
                 write_vars(tmp_path / "vars.json", settings)], timeout=1800, extra_env=env)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    changed = int(re.findall(r"changed=(\d+)", check.stdout)[-1])
    assert changed > 0
    assert containers("aiecheck") == []
    assert not (tmp_path / "keys" / "sftp_client_ed25519").exists()
    volumes = run(["docker", "volume", "ls", "--format", "{{.Name}}"]).stdout.split()
    assert not [v for v in volumes if v.startswith("aiecheck-")]


def test_switching_the_engine_on_existing_data_is_refused(stack: dict[str, Any]) -> None:
    other = "minio" if ENGINE == "rgw" else "rgw"
    started = time.perf_counter()
    refused = aie("up", "-e", stack["extra"], "-e", f"s3_engine={other}", timeout=600)
    print(f"refused in {time.perf_counter() - started:.1f} s")
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    volume = f"{PREFIX}-minio-data"
    assert f"The S3 volume {volume} holds the data of s3_engine={ENGINE}, not of s3_engine={other}" in last
    assert "aie down --purge" in last
    # Nothing changed: the S3 container still runs the engine that holds the data.
    inspect = run(["docker", "inspect", "-f", "{{.Config.Image}} {{.State.Running}}", f"{PREFIX}-s3"], timeout=60)
    assert inspect.stdout.split()[1] == "true" and ENGINE in inspect.stdout.split()[0], inspect.stdout
