"""The notebook workflow on the deployed stack: train in JupyterLab with papermill, find the
run and model in MLflow, load the registered version, serve it, and look at the UIs."""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import re
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from conftest import (
    ARTIFACTS,
    CHROMIUM_FLAGS,
    MLFLOW_URL,
    PORTS,
    PREFIX,
    aie,
    assert_unprivileged,
    chromium,
    http_status,
    in_jupyterlab,
    jupyter_exec,
    run,
    s3_client,
    tls_ca,
    trusting,
)

NOTEBOOK = "/home/aie/work/conv-net-in-keras.ipynb"
MODEL = "conv-net-digits"
EPOCHS = 6
EXPERIMENTS = ("notebooks-sftp", "notebooks-s3")
MLFLOW = MLFLOW_URL


def papermill(experiment: str, **parameters: object) -> tuple[int, list[str], float]:
    """Execute the notebook in the JupyterLab container; return papermill's exit code, the
    text the notebook printed, and the wall time."""
    out = f"/tmp/aie-{experiment}-{uuid.uuid4().hex[:8]}.ipynb"
    args = ["papermill", "--no-progress-bar", NOTEBOOK, out, "-p", "experiment", experiment,
            "-p", "epochs", str(EPOCHS), "-p", "model_name", MODEL]
    for name, value in parameters.items():
        args += ["-p", name, str(value)]
    started = time.perf_counter()
    executed = jupyter_exec(*args, timeout=900)
    seconds = time.perf_counter() - started
    notebook = json.loads(jupyter_exec("cat", out).stdout)
    cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    outputs = [output for cell in cells for output in cell.get("outputs", [])]
    printed = [line for output in outputs if output.get("output_type") == "stream"
               for line in "".join(output["text"]).splitlines()]
    # An error's traceback (without terminal colours) closes the text, to explain a failure.
    printed += [re.sub(r"\x1b\[[0-9;]*m", "", line) for output in outputs if output.get("output_type") == "error"
                for line in output["traceback"][-3:]]
    return executed.returncode, printed, seconds


def sample_inputs() -> np.ndarray:
    """The ten test images the notebook predicts, split the same way (seed 7)."""
    digits = load_digits()
    images = (digits.images.astype("float32") / 16.0)[..., None]
    _, x_test, _, _ = train_test_split(images, digits.target, test_size=0.25, random_state=7, stratify=digits.target)
    return np.asarray(x_test[:10])


@pytest.fixture(scope="module")
def trained(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for experiment in EXPERIMENTS:
        code, printed, seconds = papermill(experiment)
        assert code == 0, "\n".join(printed[-40:])
        lines = [line for line in printed if line.startswith("AIE_RESULT ")]
        assert len(lines) == 1, "\n".join(printed[-40:])
        results[experiment] = {**json.loads(lines[0].removeprefix("AIE_RESULT ")), "wall_seconds": seconds}
    print("notebook results:", json.dumps(results))
    return results


@pytest.fixture(scope="module")
def client() -> MlflowClient:
    return MlflowClient(tracking_uri=MLFLOW, registry_uri=MLFLOW)


def test_each_run_has_every_metric_of_every_epoch(trained: dict[str, dict[str, Any]], client: MlflowClient) -> None:
    for experiment, result in trained.items():
        run_data = client.get_run(result["run_id"])
        assert client.get_experiment(run_data.info.experiment_id).name == experiment
        assert run_data.info.status == "FINISHED"
        assert run_data.data.params["epochs"] == str(EPOCHS)
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
            steps = sorted(m.step for m in client.get_metric_history(result["run_id"], metric))
            assert steps == list(range(EPOCHS)), metric
        # A small CNN on the digits reaches high accuracy; a broken pipeline does not.
        assert result["test_accuracy"] > 0.9


def test_model_files_are_in_the_experiments_store(
    stack: dict[str, Any], trained: dict[str, dict[str, Any]], client: MlflowClient
) -> None:
    # MLflow 3 keeps a logged model's files under <experiment location>/models/<model id>,
    # and links the model to the run that logged it. The experiment's location is behind the
    # MLflow server (mlflow-artifacts:/<experiment id>), which wrote the files to the store, under
    # by-experiment-id/.
    for experiment, result in trained.items():
        model = client.get_logged_model(result["model_id"])
        assert model.source_run_id == result["run_id"]
        located = f"{model.experiment_id}/models/{result['model_id']}/artifacts"
        assert model.artifact_location == f"mlflow-artifacts:/{located}"
        prefix = f"by-experiment-id/{located}"
        if experiment == "notebooks-sftp":
            listing = run(["docker", "run", "--rm", "-v", f"{PREFIX}-sftp-data:/data:ro", "--entrypoint", "ls",
                           "aie/common:latest", f"/data/{prefix}"], timeout=120)
            assert listing.returncode == 0, listing.stderr
            names = set(listing.stdout.split())
        else:
            objects = s3_client(stack["keys"]).list_objects_v2(Bucket="ai-models", Prefix=prefix + "/")["Contents"]
            names = {obj["Key"][len(prefix) + 1:].split("/")[0] for obj in objects}
        assert {"MLmodel", "serving_input_example.json"} <= names, names


def test_registered_versions_load_and_predict_like_the_notebook(
    trained: dict[str, dict[str, Any]], client: MlflowClient
) -> None:
    versions = {e: r["model_version"] for e, r in trained.items()}
    assert client.get_model_version_by_alias(MODEL, "champion").version == versions["notebooks-s3"]
    script = (
        "import json, sys, numpy as np, mlflow\n"
        "x = np.asarray(json.loads(sys.stdin.read()), dtype='float32')\n"
        "out = {}\n"
        "for uri in sys.argv[1:]:\n"
        "    out[uri] = mlflow.pyfunc.load_model(uri).predict(x).argmax(axis=1).tolist()\n"
        "print(json.dumps(out))\n"
    )
    uris = [f"models:/{MODEL}/{v}" for v in versions.values()] + [f"models:/{MODEL}@champion"]
    loaded = run(in_jupyterlab("python", "-c", script, *uris),
                 input=json.dumps(sample_inputs().tolist()), timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    predictions = json.loads(loaded.stdout.strip().splitlines()[-1])
    for experiment, version in versions.items():
        assert predictions[f"models:/{MODEL}/{version}"] == trained[experiment]["sample_predictions"]
    assert predictions[f"models:/{MODEL}@champion"] == trained["notebooks-s3"]["sample_predictions"]


def served_predictions(stack: dict[str, Any], tmp_path: Path) -> list[int]:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": sample_inputs().tolist()}))
    answer = aie("predict", "--json", str(request), "-e", stack["extra"], timeout=300)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    return np.asarray(json.loads(answer.stdout)["predictions"]).argmax(axis=1).tolist()


def served_version() -> str:
    env = run(["docker", "inspect", "--format", "{{json .Config.Env}}", f"{PREFIX}-serving"]).stdout
    return next(v.split("=", 1)[1] for v in json.loads(env) if v.startswith("AIE_MODEL_VERSION="))


def test_the_served_model_answers_and_follows_the_alias(
    stack: dict[str, Any], trained: dict[str, dict[str, Any]], client: MlflowClient, tmp_path: Path
) -> None:
    serve = aie("serve", "-e", stack["extra"])
    assert serve.returncode == 0, serve.stdout[-3000:] + serve.stderr[-3000:]
    assert served_version() == trained["notebooks-s3"]["model_version"]
    # aie predict calls the model over HTTPS, checking its certificate against the deployment's CA.
    record = json.loads((stack["keys"] / "serving" / "localhost.json").read_text())
    assert (record["url"], record["ca_bundle"]) == (f"https://localhost:{PORTS['aie_serving_port']}",
                                                    str(tls_ca(stack["keys"])))
    # Nothing answers plain HTTP on its port.
    assert http_status(f"http://localhost:{PORTS['aie_serving_port']}/ping") == 0
    assert served_predictions(stack, tmp_path) == trained["notebooks-s3"]["sample_predictions"]
    # The model's own input example, when no request is given.
    example = aie("predict", "-e", stack["extra"], timeout=300)
    assert example.returncode == 0, example.stdout + example.stderr
    assert len(json.loads(example.stdout)["predictions"]) == 2

    # Move the alias to the other version: serving it takes one `aie serve`.
    client.set_registered_model_alias(MODEL, "champion", trained["notebooks-sftp"]["model_version"])
    again = aie("serve", "-e", stack["extra"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert served_version() == trained["notebooks-sftp"]["model_version"]
    assert served_predictions(stack, tmp_path) == trained["notebooks-sftp"]["sample_predictions"]
    unchanged = aie("serve", "-e", stack["extra"])
    assert "changed=0" in unchanged.stdout


# Run in the serving container as its user: what its artifact accounts may do. Each attempt to
# change something is made on an object or file that exists.
READ_ONLY_PROBE = r"""
import io, json, os, sys
import boto3, paramiko
from botocore.exceptions import ClientError
bucket, alias, root = sys.argv[1:4]
out = {}
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, MaxKeys=20).get("Contents", [])]
out["s3_listed"] = len(keys)
out["s3_read"] = len(s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read())
for what, call in (("s3_put", lambda: s3.put_object(Bucket=bucket, Key="aie-read-only-probe", Body=b"x")),
                   ("s3_delete", lambda: s3.delete_object(Bucket=bucket, Key=keys[0]))):
    try:
        call()
        out[what] = "allowed"
    except ClientError as error:
        out[what] = error.response["Error"]["Code"]
config = paramiko.SSHConfig.from_path(os.path.expanduser("~/.ssh/config")).lookup(alias)
ssh = paramiko.SSHClient()
ssh.load_host_keys(os.path.expanduser(config["userknownhostsfile"]))
ssh.connect(config["hostname"], port=int(config["port"]), username=config["user"],
            key_filename=os.path.expanduser(config["identityfile"][0]), look_for_keys=False, allow_agent=False)
sftp = ssh.open_sftp()
out["sftp_user"] = config["user"]
runs = [f"{root}/{name}" for name in sftp.listdir(root)]
out["sftp_listed"] = len(runs)
for what, call in (("sftp_put", lambda: sftp.putfo(io.BytesIO(b"x"), f"{root}/aie-read-only-probe")),
                   ("sftp_remove", lambda: sftp.rmdir(runs[0])),
                   ("sftp_rename", lambda: sftp.rename(runs[0], runs[0] + "-x"))):
    try:
        call()
        out[what] = "allowed"
    except OSError as error:
        out[what] = type(error).__name__
print(json.dumps(out))
"""


def test_serving_reads_the_artifacts_with_accounts_that_may_not_change_them(
    stack: dict[str, Any], trained: dict[str, dict[str, Any]]
) -> None:
    serve = aie("serve", "-e", stack["extra"])
    assert serve.returncode == 0, serve.stdout[-3000:] + serve.stderr[-3000:]
    container = f"{PREFIX}-serving"
    # (As the container's user, in whose home its entrypoint put the accounts' files.)
    probe = run(["docker", "exec", "-i", container, "python", "-", "ai-models", f"{PREFIX}-sftp",
                 "/artifacts"], input=READ_ONLY_PROBE, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout)
    assert seen["s3_listed"] > 0 and seen["s3_read"] > 0 and seen["sftp_listed"] > 0, seen
    assert (seen["s3_put"], seen["s3_delete"]) == ("AccessDenied", "AccessDenied"), seen
    assert seen["sftp_user"] == "mlflow-reader"
    assert (seen["sftp_put"], seen["sftp_remove"], seen["sftp_rename"]) == ("PermissionError",) * 3, seen
    # It holds the read-only accounts' secrets, not the clients'.
    held = run(["docker", "exec", container, "sh", "-c", "cat ~/.ssh/id_ed25519 ~/.aws/credentials"],
               timeout=60).stdout
    keys = stack["keys"]
    assert (keys / "sftp_reader_ed25519").read_text().strip() in held
    assert (keys / "secrets" / "s3_reader_secret_key").read_text().split()[0] in held
    assert (keys / "sftp_client_ed25519").read_text().strip() not in held
    assert (keys / "secrets" / "s3_client_secret_key").read_text().split()[0] not in held
    # And no process of it is root or holds a capability.
    assert_unprivileged(container)


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--model", "no-such-model"], "Unknown model no-such-model"),
     (["--alias", "no-such-alias"], f"Model {MODEL} has no alias no-such-alias")],
)
def test_serving_an_unknown_model_or_alias_fails_clearly(
    stack: dict[str, Any], trained: dict[str, dict[str, Any]], option: list[str], message: str
) -> None:
    result = aie("serve", *option, "-e", stack["extra"], timeout=300)
    assert result.returncode == 1
    assert message in result.stderr


def test_a_notebook_failing_mid_training_leaves_a_failed_run(
    trained: dict[str, dict[str, Any]], client: MlflowClient
) -> None:
    code, printed, _ = papermill("notebooks-sftp", fail_after_epoch=2)
    assert code != 0
    run_ids = [m.group(1) for line in printed if (m := re.match(r"run (\w+) in experiment", line))]
    assert len(run_ids) == 1, printed
    failed = client.get_run(run_ids[0])
    assert failed.info.status == "FAILED"
    assert len(client.get_metric_history(run_ids[0], "loss")) == 2


def browse(url: str, screenshot: str | None, env: dict[str, str] | None = None) -> str:
    """Render url in headless Chromium (with env, e.g. trusting()); keep a screenshot unless None
    (Chromium takes none of a page refused for its certificate); return the rendered DOM."""
    ARTIFACTS.mkdir(exist_ok=True)
    common = [chromium(), *CHROMIUM_FLAGS, "--virtual-time-budget=15000"]
    # A new empty profile for each start, removed after it.
    with tempfile.TemporaryDirectory(prefix="aie-chromium-") as first, \
            tempfile.TemporaryDirectory(prefix="aie-chromium-") as second:
        if screenshot is not None:
            shot = run([*common, f"--user-data-dir={first}", f"--screenshot={ARTIFACTS / screenshot}", url],
                       timeout=300, extra_env=env)
            assert shot.returncode == 0, shot.stderr[-2000:]
            assert (ARTIFACTS / screenshot).stat().st_size > 10_000
        dom = run([*common, f"--user-data-dir={second}", "--dump-dom", url], timeout=300, extra_env=env)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


# Headers of one hop of HTTP, which a proxy does not pass on, the ones it sets itself, and
# Accept-Encoding (answers come unencoded, read whole).
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
       "proxy-authenticate", "host", "content-length", "authorization", "server", "date", "accept-encoding"}


@contextlib.contextmanager
def signed_in(upstream: str, username: str, password: str, tls: ssl.SSLContext) -> Iterator[str]:
    """A local HTTP proxy to upstream (HTTPS, checked with tls) that signs every request in with
    basic auth: what a browser does once its user has answered the sign-in prompt. Headless
    Chromium cannot answer that prompt, and the MLflow UI's own requests refuse a URL holding
    credentials."""
    token = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    class Forward(http.server.BaseHTTPRequestHandler):
        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            # Every header goes both ways (the UI's session cookie and CSRF token among them),
            # but those of this hop.
            headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP}
            request = urllib.request.Request(upstream + self.path, data=self.rfile.read(length) if length else None,
                                             method=self.command, headers={**headers, "Authorization": token})
            for attempt in range(3):
                try:
                    answer = urllib.request.urlopen(request, timeout=60, context=tls)
                except urllib.error.HTTPError as error:
                    answer = error
                except (http.client.HTTPException, OSError):
                    # The server may close a connection it was handed at the same moment
                    # (RemoteDisconnected): the browser would try again, and so does this.
                    if attempt == 2:
                        raise
                    continue
                try:
                    body = answer.read()
                    break
                except (http.client.HTTPException, OSError):
                    # Or close it in the middle of a large answer (IncompleteRead).
                    answer.close()
                    if attempt == 2:
                        raise
            with answer:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    if name.lower() not in HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = forward

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_mlflow_ui_shows_the_experiment_and_the_run(
    stack: dict[str, Any], trained: dict[str, dict[str, Any]], client: MlflowClient
) -> None:
    result = trained["notebooks-s3"]
    experiment_id = client.get_run(result["run_id"]).info.experiment_id
    run_name = client.get_run(result["run_id"]).info.run_name
    tls = ssl.create_default_context(cafile=str(tls_ca(stack["keys"])))
    # Not signed in, the UI is not even sent: the answer asks the browser for a user and password.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{MLFLOW}/", timeout=30, context=tls)  # noqa: S310
    assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"] == 'Basic realm="mlflow"'
    password = (stack["keys"] / "secrets" / "mlflow_admin_password").read_text().split()[0]
    with signed_in(MLFLOW, "admin", password, tls) as ui:
        dom = browse(f"{ui}/#/experiments/{experiment_id}/runs/{result['run_id']}", "mlflow-run.png")
        assert run_name in dom
        dom = browse(f"{ui}/#/experiments/{experiment_id}", "mlflow-experiment.png")
        assert "notebooks-s3" in dom


def test_jupyterlab_opens_over_https_with_its_token(
    stack: dict[str, Any], trained: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    token = (stack["keys"] / "secrets" / "jupyterlab_token").read_text().split()[0]
    lab = f"https://localhost:{PORTS['aie_jupyterlab_port']}/lab"
    trusted = trusting(tls_ca(stack["keys"]), tmp_path / "home")
    dom = browse(f"{lab}/tree/conv-net-in-keras.ipynb?token={token}", "jupyterlab.png", trusted)
    assert "conv-net-in-keras.ipynb" in dom
    refused = browse(f"{lab}?token=wrong-token", "jupyterlab-wrong-token.png", trusted)
    assert "conv-net-in-keras.ipynb" not in refused
    # A browser that does not trust the CA gets Chromium's warning page, not JupyterLab.
    untrusted = browse(f"{lab}/tree/conv-net-in-keras.ipynb?token={token}", None)
    assert "conv-net-in-keras.ipynb" not in untrusted
