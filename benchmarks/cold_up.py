"""How long `make up` takes on a fresh machine: no virtualenv, no Docker engine, no image.

The fresh machine is a Debian container with its own Docker engine (Docker in Docker, the flags
of the Molecule test hosts) and nothing but Python and make, as a new laptop or server comes.
The project (this checkout's HEAD, `git archive`) is copied in, then `make up` runs there and is
timed: the virtualenv, Docker's installation and start, the base image (debootstrap where no
registry answers), every image, and the deployment. Packages come from the network (PyPI,
Debian), as on a user's machine. The container and its engine's volume are removed afterwards.

    python benchmarks/cold_up.py [--engine minio] [--keep]

`make up` runs as the README gives it: no S3 engine is named unless --engine names one. Prints the
wall time of `make up` beside the target; then a second `aie up` must change nothing.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
TARGET = 600.0
NAME = "aie-cold-up"
# What lets a container run its own Docker engine here (as molecule/ and .config/molecule say).
DIND = ["--cap-add=" + cap for cap in (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE "
    "NET_ADMIN NET_RAW SYS_CHROOT SYS_PTRACE SYS_ADMIN MKNOD AUDIT_WRITE SETFCAP").split()] + [
    "--security-opt=seccomp=unconfined", "--security-opt=apparmor=unconfined",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "-v", f"{NAME}-docker:/var/lib/docker"]
# The inner engine's settings, as the Molecule test hosts have them.
VARS = """docker_engine_daemon_args: ["--cgroup-parent=/aie-cold-up"]
docker_engine_daemon_env: {DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE: "1"}
"""


def sh(*args: str, check: bool = True, capture_output: bool = False,
       input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002 - as subprocess.run
    # latin-1 passes the project's tar archive through unchanged.
    return subprocess.run(list(args), check=check, capture_output=capture_output, input=input,
                          text=True, encoding="latin-1")


def clean() -> None:
    sh("docker", "rm", "-f", NAME, check=False, capture_output=True)
    sh("docker", "volume", "rm", f"{NAME}-docker", check=False, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="debian:trixie-slim", help="the fresh machine's system")
    parser.add_argument("--engine", default="", help="s3_engine (default: none named, as make up has it)")
    parser.add_argument("--keep", action="store_true", help="leave the container for a look")
    args = parser.parse_args()
    clean()
    try:
        sh("docker", "run", "-d", "--init", "--name", NAME, *DIND, args.image, "sleep", "infinity",
           capture_output=True)
        # What a fresh machine has before the README's first command: Python, make, a checkout,
        # and the trust of its network (the CA certificates this machine trusts, for proxies that
        # intercept TLS, and pip told to use them, as /etc/pip.conf does here).
        sh("docker", "exec", NAME, "sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
           "apt-get install -y -qq python3 make ca-certificates >/dev/null")
        for certificate in sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")):
            sh("docker", "cp", str(certificate), f"{NAME}:/usr/local/share/ca-certificates/")
        sh("docker", "exec", NAME, "sh", "-c", "update-ca-certificates >/dev/null && printf "
           "'[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n' > /etc/pip.conf")
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=PROJECT, check=True, capture_output=True).stdout
        sh("docker", "exec", "-i", NAME, "sh", "-c", "mkdir -p /root/aie && tar -x -C /root/aie",
           input=archive.decode("latin-1"))
        engine = f"s3_engine: {args.engine}\n" if args.engine else ""
        sh("docker", "exec", "-i", NAME, "sh", "-c", "cat > /root/cold.yml", input=VARS + engine)
        started = time.perf_counter()
        done = sh("docker", "exec", "-w", "/root/aie", NAME, "make", "up",
                  "AIE_ARGS=-e @/root/cold.yml",
                  check=False, capture_output=True)
        seconds = time.perf_counter() - started
        log = done.stdout + done.stderr
        saved = Path(tempfile.gettempdir()) / "aie-cold-up.log"
        saved.write_text(log)
        if done.returncode != 0:
            sys.exit(f"make up failed after {seconds:.0f} s: {log.strip().splitlines()[-3:]} "
                     f"(whole log: {saved})")
        # A second run changes nothing, on a fresh machine as anywhere.
        again = sh("docker", "exec", "-w", "/root/aie", NAME, ".venv/bin/aie", "up",
                   "-e", "@/root/cold.yml", check=False, capture_output=True)
        if again.returncode != 0 or "changed=0" not in again.stdout:
            sys.exit(f"the second aie up changed something or failed: {(again.stdout + again.stderr).strip()}")
        verdict = "ok" if seconds <= TARGET else "over"
        print(f"{'command':<12} {'time':>8} {'target':>8}   (fresh machine, s3_engine={args.engine or 'not set'})")
        print(f"{'make up':<12} {seconds:>7.0f}s {TARGET:>7.0f}s   {verdict}")
        took = [line for line in (log + again.stdout + again.stderr).splitlines() if re.match(r"aie: \S+ took", line)]
        print("\n".join(took))
    finally:
        if not args.keep:
            clean()


if __name__ == "__main__":
    main()
