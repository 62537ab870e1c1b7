"""Filters shared by the roles: where each service is reached from a given host.

This is the one place that computes service addresses. A service is reached through the
Docker network (its container name and internal port) from hosts that share its Docker
engine, and through its host's address and published port from every other host (and by
people: `public`, what `aie status` shows). A service with an `external` URL (the S3 server
with `s3_engine: external`) runs on no inventory host: every client reaches it at that URL.
A service with `tls` set serves HTTPS: its endpoints carry an https `url`, and its host's
certificate names every host and address clients use for it (`aie_tls_names`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _external(url: str) -> dict[str, Any]:
    """The endpoint of a service outside the inventory, reached at `url` from everywhere."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    address = {"host": parts.hostname, "port": port, "url": url.rstrip("/")}
    return {"server": "", **address, "from_host": dict(address), "public": dict(address)}


def _with_url(address: dict[str, Any], scheme: str) -> dict[str, Any]:
    return {**address, "url": f"{scheme}://{address['host']}:{address['port']}"}


def _same_engine(client: str, server: str, hostvars: Mapping[str, Any]) -> bool:
    if client == server:
        return True
    # Hosts managed through the local connection all talk to the controller's engine.
    return bool(
        hostvars[client].get("ansible_connection") == "local"
        and hostvars[server].get("ansible_connection") == "local"
    )


def _address(server: str, hostvars: Mapping[str, Any]) -> str:
    host_vars = hostvars[server]
    return str(host_vars.get("aie_advertised_address") or host_vars.get("ansible_host") or server)


def aie_endpoints(
    services: Mapping[str, Mapping[str, Any]],
    client: str,
    hostvars: Mapping[str, Any],
    groups: Mapping[str, list[str]],
) -> dict[str, dict[str, Any]]:
    """Return, for each deployed service, the host and port containers on `client` use to
    reach it, (`from_host`) the ones processes on the host itself use, and (`public`) its
    host's address and published port. HTTP services have a `url` in each."""
    endpoints: dict[str, dict[str, Any]] = {}
    for name, service in services.items():
        if service.get("external"):
            endpoints[name] = _external(str(service["external"]))
            continue
        members = groups.get(service["group"]) or []
        if not members:
            continue
        server = members[0]
        published = int(service["published_port"])
        if _same_engine(client, server, hostvars):
            host, port = str(service["container"]), int(service["port"])
            # The server's own probe address (loopback unless its ports are published on one address).
            from_host = {"host": str(hostvars[server].get("aie_probe_address") or "127.0.0.1"), "port": published}
        else:
            host, port = _address(server, hostvars), published
            from_host = {"host": host, "port": port}
        public = {"host": _address(server, hostvars), "port": published}
        endpoint = {"server": server, "host": host, "port": port, "from_host": from_host, "public": public}
        if "health" in service and "path" in service["health"]:
            # An HTTP service: the URLs clients use.
            scheme = "https" if service.get("tls") else "http"
            endpoint = _with_url(endpoint, scheme)
            endpoint["from_host"] = _with_url(from_host, scheme)
            endpoint["public"] = _with_url(public, scheme)
        endpoints[name] = endpoint
    return endpoints


def aie_endpoints_of(
    services: Mapping[str, Mapping[str, Any]],
    service: str,
    clients: list[str],
    hostvars: Mapping[str, Any],
    groups: Mapping[str, list[str]],
) -> list[dict[str, Any]]:
    """The endpoint of one service as each of `clients` reaches it."""
    return [aie_endpoints(services, client, hostvars, groups)[service] for client in clients]


def aie_tls_names(
    services: Mapping[str, Mapping[str, Any]],
    server: str,
    hostvars: Mapping[str, Any],
    groups: Mapping[str, list[str]],
    extra: Iterable[str] = (),
) -> list[str]:
    """The subject alternative names of `server`'s certificate: every name and address by which
    a client (any host of the `aie` group, or a process on `server` itself) reaches a service
    with `tls` that runs there, and `extra` ones (its address on the network, names users give)."""
    names = {"localhost", "127.0.0.1", *(str(name) for name in extra if name)}
    clients = list(groups.get("aie") or []) or [server]
    for name, service in services.items():
        if not service.get("tls") or service.get("external") or server not in (groups.get(service["group"]) or []):
            continue
        names.add(str(service["container"]))
        for client in clients:
            endpoint = aie_endpoints(services, client, hostvars, groups)[name]
            names.update({str(endpoint["host"]), str(endpoint["from_host"]["host"])})
    return sorted(_san(name) for name in names)


def _san(name: str) -> str:
    try:
        return f"IP:{ipaddress.ip_address(name)}"
    except ValueError:
        return f"DNS:{name}"


def aie_hosted(services: Mapping[str, Mapping[str, Any]], group_names: list[str]) -> list[str]:
    """The services whose container runs on a host in `group_names` (external ones run nowhere)."""
    return [
        name for name, service in services.items()
        if service["group"] in group_names and not service.get("external")
    ]


def aie_required_groups(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The inventory groups that need a host: those of services neither optional nor external."""
    return [
        str(service["group"]) for service in services.values()
        if not service.get("optional") and not service.get("external")
    ]


def aie_known_host(host: str, port: int) -> str:
    """The name OpenSSH and paramiko look up in known_hosts for host and port."""
    return host if int(port) == 22 else f"[{host}]:{int(port)}"


def aie_known_host_names(
    endpoints: list[Mapping[str, Any]], extra_hosts: list[str], extra_port: int
) -> list[str]:
    """known_hosts names for the given endpoints and for extra hosts on extra_port."""
    names = {aie_known_host(ep["host"], ep["port"]) for ep in endpoints}
    names.update(aie_known_host(host, extra_port) for host in extra_hosts if host)
    return sorted(names)


def aie_client_addresses(
    clients: Iterable[str], server: str, hostvars: Mapping[str, Any], subnets: Iterable[str]
) -> list[str]:
    """The networks (CIDR) from which the containers of the `clients` hosts reach a service on
    `server`: the subnets of the services' Docker network on `server` for hosts that share its
    engine (they reach it on that network), else each host's own address, to which its engine
    masquerades what its containers send (its default route's, from the gathered facts, and the
    address it is reached at, when that is an IP address)."""
    found: list[str] = []
    for client in clients:
        if _same_engine(client, server, hostvars):
            found += [str(ipaddress.ip_network(subnet, strict=False)) for subnet in subnets]
            continue
        facts = hostvars[client].get("ansible_facts") or {}
        candidates = [(facts.get(key) or {}).get("address") for key in ("default_ipv4", "default_ipv6")]
        candidates.append(_address(client, hostvars))
        addresses = []
        for candidate in filter(None, candidates):
            try:
                addresses.append(ipaddress.ip_address(str(candidate)))
            except ValueError:
                continue
        if not addresses:
            raise ValueError(
                f"the address of {client} is not known: no facts were gathered for it and "
                f"{_address(client, hostvars)!r} is no IP address; name its networks in database_client_addresses")
        found += [str(ipaddress.ip_network(address)) for address in addresses]
    return list(dict.fromkeys(found))


def aie_volume_mounts(volumes: Mapping[str, str], prefix: str) -> list[dict[str, Any]]:
    """Docker mounts for named volumes given as {name suffix: mount point}. Never filled from the
    image (no_copy): Docker would otherwise give an empty volume, at each mount, the owner of the
    image's folder at its mount point, undoing its hand-over to the service's user."""
    return [
        {"type": "volume", "source": f"{prefix}-{suffix}", "target": target, "no_copy": True}
        for suffix, target in sorted(volumes.items())
    ]


def aie_confinement(
    services: Mapping[str, Mapping[str, Any]], others: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """How far each container is confined, by name: its `confinement` with its `memory`, for each
    service (aie_services), then for the other containers (the backup agent's)."""
    return {name: {**entry.get("confinement", {}), "memory": entry["memory"]}
            for name, entry in {**services, **others}.items()}


def aie_override_problems(overrides: object, definitions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What is wrong with aie_service_overrides: services and fields that aie_services does not
    define, and values of the wrong kind (none: an empty list). Written here, not as an assert of
    Jinja tests, to name every culprit at once."""
    if not isinstance(overrides, Mapping):
        return [f"not a dictionary of services but {overrides!r}"]
    problems = []
    for name, fields in overrides.items():
        if name not in definitions:
            problems.append(f"no service {name} (the services: {', '.join(definitions)})")
        elif not isinstance(fields, Mapping):
            problems.append(f"{name}: not a dictionary of fields but {fields!r}")
        else:
            problems += [f"{name}: no field {field} (its fields: {', '.join(definitions[name])})"
                         for field in fields if field not in definitions[name]]
    return problems


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "aie_client_addresses": aie_client_addresses,
            "aie_confinement": aie_confinement,
            "aie_override_problems": aie_override_problems,
            "aie_endpoints": aie_endpoints,
            "aie_endpoints_of": aie_endpoints_of,
            "aie_hosted": aie_hosted,
            "aie_required_groups": aie_required_groups,
            "aie_tls_names": aie_tls_names,
            "aie_known_host": aie_known_host,
            "aie_known_host_names": aie_known_host_names,
            "aie_volume_mounts": aie_volume_mounts,
        }
