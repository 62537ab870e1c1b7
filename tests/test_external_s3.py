"""s3_engine: external against an S3 server started outside the stack (Ceph RADOS Gateway).

Only the S3 part is deployed (playbooks/validate.yml and playbooks/s3.yml, prefix aiex):
no S3 container or volume appears, the bucket is created on the external server (or, with keys
that may not create buckets, found there or refused with one line), a second run changes nothing.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import socket
import ssl
import string
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import aie, ansible_playbook, changed_tasks, run, wait_for_s3, write_vars

PREFIX = "aiex"
SERVER = "aiex-outside-s3"
VOLUME = "aiex-outside-s3-data"
PORT = 27190
ENDPOINT = f"http://127.0.0.1:{PORT}"
BUCKET = "aiex-models"
TLS_PORT = 27191


def _key(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _remove_server() -> None:
    run(["docker", "rm", "-f", SERVER], timeout=120)
    run(["docker", "volume", "rm", "-f", VOLUME], timeout=120)


def _client(keys: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=ENDPOINT, aws_access_key_id=keys["access"],
                        aws_secret_access_key=keys["secret"], region_name="us-east-1")


@pytest.fixture(scope="module")
def s3_server(rgw_test_image: str) -> Iterator[dict[str, dict[str, str]]]:
    """A RADOS Gateway on 127.0.0.1:PORT with a root user and a user that may not create buckets."""
    upper, mixed = string.ascii_uppercase + string.digits, string.ascii_letters + string.digits
    users = {"root": {"access": _key(upper, 20), "secret": _key(mixed, 40)},
             "limited": {"access": _key(upper, 20), "secret": _key(mixed, 40)}}
    _remove_server()
    try:
        # The limited user is the image's client user (aie-client), which RGW refuses any bucket.
        started = run(["docker", "run", "-d", "--name", SERVER, "-e", f"S3_ACCESS_KEY={users['root']['access']}",
                       "-e", f"S3_SECRET_KEY={users['root']['secret']}", "-e", "S3_CAPACITY_GIB=4",
                       "-e", "S3_PORT=9000",
                       "-e", f"S3_CLIENT_ACCESS_KEY={users['limited']['access']}",
                       "-e", f"S3_CLIENT_SECRET_KEY={users['limited']['secret']}",
                       "-v", f"{VOLUME}:/var/lib/aie-s3", "-p", f"127.0.0.1:{PORT}:9000", rgw_test_image], timeout=120)
        assert started.returncode == 0, started.stderr
        wait_for_s3(ENDPOINT, SERVER, 180)
        yield users
    finally:
        _remove_server()


def _settings(tmp_path: Path, keys: dict[str, str], **extra: object) -> str:
    values = {"aie_name_prefix": PREFIX, "aie_keys_dir": str(tmp_path / "keys"), "s3_engine": "external",
              "aie_s3_endpoint": ENDPOINT, "aie_s3_access_key": keys["access"],
              "aie_s3_secret_key": keys["secret"], "aie_s3_bucket": BUCKET, **extra}
    return write_vars(tmp_path / "vars.json", values)


def _deploy(extra: str, *options: str, inventory: str = "inventory/local") -> tuple[int, str, int]:
    result = ansible_playbook("-i", inventory, "playbooks/validate.yml", "playbooks/s3.yml", "-e", extra, *options)
    output = result.stdout + result.stderr
    return result.returncode, output, changed_tasks(output)


def _exists(client: Any, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as error:
        assert error.response["Error"]["Code"] in ("404", "NoSuchBucket"), error.response
        return False
    return True


def test_no_s3_container_or_volume_and_the_bucket_is_created(
    s3_server: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    root = _client(s3_server["root"])
    extra = _settings(tmp_path, s3_server["root"])
    code, output, _ = _deploy(extra, "--check")
    assert code == 0, output[-3000:]
    assert not _exists(root, BUCKET)
    code, output, changed = _deploy(extra)
    assert code == 0, output[-3000:]
    assert changed >= 1
    assert _exists(root, BUCKET)
    assert run(["docker", "container", "inspect", f"{PREFIX}-s3"]).returncode != 0
    assert run(["docker", "volume", "inspect", f"{PREFIX}-minio-data"]).returncode != 0
    for options in ((), ("--check",)):
        code, output, changed = _deploy(extra, *options)
        assert code == 0 and changed == 0, output[-3000:]
    # No key is printed, not even by the bucket tasks.
    assert s3_server["root"]["secret"] not in output

    # aie s3-check reads the external bucket back.
    root.put_object(Bucket=BUCKET, Key="0/run1/artifacts/a.txt", Body=b"artifact")
    checked = aie("s3-check", "-e", extra, timeout=600)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "1 objects" in checked.stdout and "0 corrupt" in checked.stdout


def test_an_inventory_without_s3_host_is_accepted(s3_server: dict[str, dict[str, str]], tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  children:\n    aie:\n      children:\n"
        + "".join(f"        {g}:\n          hosts:\n            localhost:\n" for g in ("mlflow", "sftp", "jupyterlab"))
        + "  hosts:\n    localhost:\n      ansible_connection: local\n"
        + "      ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
    )
    # No database host either: MLflow on SQLite.
    code, output, _ = _deploy(_settings(tmp_path, s3_server["root"], aie_s3_bucket="aiex-nohost",
                                        aie_mlflow_backend="sqlite"), inventory=str(inventory))
    assert code == 0, output[-3000:]
    assert _exists(_client(s3_server["root"]), "aiex-nohost")


def test_keys_that_may_not_create_buckets(s3_server: dict[str, dict[str, str]], tmp_path: Path) -> None:
    root, limited = _client(s3_server["root"]), _client(s3_server["limited"])
    # RGW refuses them a bucket (max-buckets -1).
    with pytest.raises(ClientError, match="AccessDenied"):
        limited.create_bucket(Bucket="aiex-try")

    # A missing bucket: one line naming it, the endpoint and what to do; nothing is created.
    code, output, _ = _deploy(_settings(tmp_path, s3_server["limited"], aie_s3_bucket="aiex-missing"))
    assert code != 0
    assert (f"The bucket aiex-missing does not exist on {ENDPOINT} (or these keys may not reach it) and the keys in "
            "aie_s3_access_key / aie_s3_secret_key may not create it") in output
    assert "create the bucket there and let these keys use it" in output
    assert s3_server["limited"]["secret"] not in output
    assert not _exists(root, "aiex-missing")

    # A bucket someone else created and lets them use (a bucket policy) is accepted, and used.
    root.create_bucket(Bucket="aiex-shared")
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam:::user/aie-client"]}, "Action": ["s3:*"],
        "Resource": ["arn:aws:s3:::aiex-shared", "arn:aws:s3:::aiex-shared/*"]}]}
    root.put_bucket_policy(Bucket="aiex-shared", Policy=json.dumps(policy))
    extra = _settings(tmp_path, s3_server["limited"], aie_s3_bucket="aiex-shared")
    for options in ((), ("--check",)):
        code, output, changed = _deploy(extra, *options)
        assert code == 0 and changed == 0, output[-3000:]
    limited.put_object(Bucket="aiex-shared", Key="probe", Body=b"1")


def _certificate(subject: str, key: Any, issuer: x509.Name, signer: Any, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture()
def tls_endpoint(s3_server: dict[str, dict[str, str]], tmp_path: Path) -> Iterator[Path]:
    """https://127.0.0.1:TLS_PORT in front of the gateway, its certificate signed by a private CA: yields
    the CA bundle (PEM)."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aiex test CA")])
    ca_cert = _certificate("aiex test CA", ca_key, ca_name, ca_key, ca=True)
    server_cert = _certificate("127.0.0.1", server_key, ca_name, ca_key, ca=False)
    bundle, chain, key = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    listener = socket.create_server(("127.0.0.1", TLS_PORT))
    listener.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                plain, _ = listener.accept()
            except OSError:
                continue
            try:
                client = context.wrap_socket(plain, server_side=True)
            except (OSError, ssl.SSLError):
                plain.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", PORT))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, target), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield bundle
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_a_private_ca_bundle_verifies_tls(
    s3_server: dict[str, dict[str, str]], tls_endpoint: Path, tmp_path: Path
) -> None:
    https = f"https://127.0.0.1:{TLS_PORT}"
    # Without the bundle the certificate is not trusted: refused, never accepted unverified.
    code, output, _ = _deploy(_settings(tmp_path, s3_server["root"], aie_s3_endpoint=https, aie_s3_bucket="aiex-tls"))
    assert code != 0 and f"The certificate of {https} is not trusted" in output, output[-3000:]
    assert "certificate verify failed" in output and "set aie_s3_ca_bundle to the PEM bundle that signs it" in output
    assert not _exists(_client(s3_server["root"]), "aiex-tls")

    extra = _settings(tmp_path, s3_server["root"], aie_s3_endpoint=https, aie_s3_bucket="aiex-tls",
                      aie_s3_ca_bundle=str(tls_endpoint))
    code, output, _ = _deploy(extra)
    assert code == 0, output[-3000:]
    assert _exists(_client(s3_server["root"]), "aiex-tls")
    code, output, changed = _deploy(extra)
    assert code == 0 and changed == 0, output[-3000:]
    checked = aie("s3-check", "-e", extra, timeout=600)
    assert checked.returncode == 0 and "0 objects" in checked.stdout, checked.stdout[-2000:] + checked.stderr[-2000:]
