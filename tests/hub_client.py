"""A person at JupyterHub, as the tests need one: the login form filled in as a browser does, and
the person's server started through the hub's API. The hub's tests import it; the multihost
scenario's verify runs it as a program against the hub on its own test host.

    python tests/hub_client.py HUB_URL CA_FILE NAME PASSWORD_FILE

signs NAME in, starts their server, waits until it is ready and prints the seconds it took as
JSON. The password is the first word of PASSWORD_FILE, as aie keeps a generated one (never on a
command line). It exits 1, naming the answer, when the hub refuses the password or the server
does not start. Written with requests rather than JupyterHub's own client: the hub has no client
library for its login form (a browser's path), which is the one the tests take.
"""

from __future__ import annotations

import json
import sys
import time

import requests


def sign_in(hub: str, ca_file: str, person: str, secret: str) -> tuple[requests.Session, requests.Response]:
    """The hub's login form, as a browser fills it in (its _xsrf cookie and field). A 302 answer
    is a signed-in session, ready for the API's POSTs (its XSRF header set)."""
    session = requests.Session()
    # The deployment's CA (not REQUESTS_CA_BUNDLE's, which requests would prefer).
    session.trust_env = False
    session.verify = ca_file
    form = session.get(f"{hub}/hub/login", timeout=30)
    form.raise_for_status()
    xsrf = session.cookies.get("_xsrf", "")
    answer = session.post(f"{hub}/hub/login?next=", data={"username": person, "password": secret, "_xsrf": xsrf},
                          allow_redirects=False, timeout=60)
    if answer.status_code == 302:
        # The signed-in session's XSRF token (a page of the hub sets it), for the API's POSTs.
        session.get(f"{hub}/hub/home", timeout=30)
        tokens = [cookie.value or "" for cookie in session.cookies if cookie.name == "_xsrf"]
        session.headers["X-XSRFToken"] = tokens[-1]
    return session, answer


def start_server(session: requests.Session, hub: str, person: str, seconds: float = 180) -> None:
    """Start the person's server through the hub's API, signed in as them; wait until it is ready."""
    spawn = session.post(f"{hub}/hub/api/users/{person}/server", timeout=60)
    assert spawn.status_code in (201, 202), (spawn.status_code, spawn.text[:500])
    deadline = time.monotonic() + seconds
    while True:
        model = session.get(f"{hub}/hub/api/users/{person}", timeout=30).json()
        if (model.get("servers", {}).get("") or {}).get("ready"):
            return
        assert time.monotonic() < deadline, model
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    hub, ca_file, person, password_file = argv
    with open(password_file, encoding="utf-8") as kept:
        secret = kept.read().split()[0]
    started = time.perf_counter()
    session, answer = sign_in(hub, ca_file, person, secret)
    if answer.status_code != 302:
        print(f"the hub at {hub} refused {person}: {answer.status_code} {answer.text[:300]}", file=sys.stderr)
        return 1
    try:
        start_server(session, hub, person)
    except AssertionError as error:
        print(f"{person}'s server did not start: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"person": person, "sign_in_to_server_s": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
