"""Registry hosts as containerd configures them, so an operator's files work unchanged.

For an image on registry host ``H`` the hosts to try come from, in this order of
precedence:

1. ``config_path`` (containerd's ``[plugins."io.containerd.grpc.v1.cri".registry]
   config_path``; several roots may be given with ``:``): the first of
   ``<root>/<H with : as _>_``, ``<root>/<H>``, ``<root>/_default`` that exists, whose
   ``hosts.toml`` lists ``[host."URL"]`` tables in file order and then ``server`` (the
   image's own host when ``server`` is absent);
2. the older ``registry.mirrors."H".endpoint`` (or ``"*"``) list, then ``H`` itself;
3. ``H`` alone (``docker.io`` is ``registry-1.docker.io``).

Each host has ``capabilities`` (``pull``, ``resolve``, ``push``; all when unset),
``skip_verify``, ``ca`` (files, relative to the hosts.toml directory), ``client``
certificates, ``header`` and ``override_path``. ``/v2`` is appended to a host's path
unless ``override_path``. Loopback hosts (``localhost``, ``127.x``, ``::1``) are plain
HTTP by default, as containerd allows them. Credentials: ``registry.configs."H".auth``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from .errors import HostsConfigError

__all__ = ["RegistryHost", "Credentials", "RegistryConfig", "HostsConfigError", "decode_auth",
           "same_registry"]

DOCKER_HUB = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"
CAPABILITIES = ("pull", "resolve", "push", "referrers")


@dataclass(frozen=True)
class Credentials:
    """What a registry gets: Basic username/password, or an identity (refresh) token,
    or a registry (bearer) token used as it is. ``server``: the registry host they are
    for (kubelet's ``server_address``); "" for any host the image is pulled from."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    server: str = ""

    def __bool__(self) -> bool:
        return bool(self.username or self.password or self.identity_token or self.registry_token)


@dataclass(frozen=True)
class RegistryHost:
    """One endpoint to try: ``scheme://host[/prefix]`` plus its settings."""

    scheme: str
    host: str
    path: str = "/v2"
    capabilities: tuple[str, ...] = CAPABILITIES
    skip_verify: bool = False
    ca_files: tuple[str, ...] = ()
    client_certs: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


@dataclass(frozen=True)
class RegistryConfig:
    """containerd's registry table: ``config_path`` roots, legacy ``mirrors`` and
    ``configs`` (``auth`` and ``tls``)."""

    config_path: tuple[str, ...] = ()
    mirrors: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)

    def hosts(self, registry: str) -> list[RegistryHost]:
        """The hosts to try for images on *registry*, in order."""
        for root in self.config_path:
            directory = _host_dir(root, registry)
            if directory is not None:
                return _from_hosts_toml(directory, registry)
        endpoints = self.mirrors.get(registry) or self.mirrors.get("*") or ()
        hosts = [self._legacy(endpoint) for endpoint in endpoints]
        own = _default_host(registry)
        if own.host not in {h.host for h in hosts}:
            hosts.append(self._with_tls(own))
        return hosts

    def credentials_for(self, host: str, given: Credentials | None) -> Credentials:
        """What endpoint *host* gets, as containerd decides: the client's credentials
        (kubelet's pull secret) when it sent any, unless they name another server;
        otherwise the registry table's for that host."""
        if given is None:
            return self.credentials(host)
        if given.server and not same_registry(given.server, host):
            return Credentials()
        return given

    def credentials(self, host: str) -> Credentials:
        """``configs."<host>".auth``, keyed by the endpoint's host (``registry-1.docker.io``
        for Docker Hub, a mirror's own host for a mirror), as containerd keys it."""
        auth = (self.configs.get(host) or {}).get("auth") or {}
        user, password = auth.get("username", ""), auth.get("password", "")
        if auth.get("auth") and not user:
            user, password = decode_auth(auth["auth"], f"configs.{host}.auth.auth")
        return Credentials(user, password, identity_token=auth.get("identitytoken", ""))

    def _legacy(self, endpoint: str) -> RegistryHost:
        if "://" not in endpoint:
            endpoint = ("http://" if _is_loopback(endpoint) else "https://") + endpoint
        url = urlsplit(endpoint)
        path = url.path.rstrip("/") or ""
        host = RegistryHost(url.scheme, url.netloc, path if path.endswith("/v2") else path + "/v2",
                            capabilities=("pull", "resolve"))
        return self._with_tls(host)

    def _with_tls(self, host: RegistryHost) -> RegistryHost:
        tls = (self.configs.get(host.host) or {}).get("tls") or {}
        if not tls:
            return host
        certs = ()
        if tls.get("cert_file") or tls.get("key_file"):
            if not (tls.get("cert_file") and tls.get("key_file")):
                raise HostsConfigError(f'registry.configs."{host.host}".tls: cert_file and '
                                       "key_file go together")
            certs = ((tls["cert_file"], tls["key_file"]),)
        return RegistryHost(host.scheme, host.host, host.path, host.capabilities,
                            skip_verify=bool(tls.get("insecure_skip_verify")),
                            ca_files=(tls["ca_file"],) if tls.get("ca_file") else (),
                            client_certs=certs, headers=host.headers)


_DOCKER_HUB_NAMES = {DOCKER_HUB, DOCKER_HUB_HOST, "index.docker.io"}


def same_registry(a: str, b: str) -> bool:
    """Whether hosts *a* and *b* are one registry (Docker Hub has three names)."""
    return a == b or (a in _DOCKER_HUB_NAMES and b in _DOCKER_HUB_NAMES)


def decode_auth(value: str, where: str) -> tuple[str, str]:
    """A Docker ``auth`` value: base64 of ``user:password``. Raises
    ``HostsConfigError`` naming *where*."""
    try:
        text = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise HostsConfigError(f"{where}: not base64 of user:password") from None
    user, sep, password = text.partition(":")
    if not sep:
        raise HostsConfigError(f"{where}: not base64 of user:password")
    return user, password


def _is_loopback(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _default_host(registry: str) -> RegistryHost:
    if registry == DOCKER_HUB:
        return RegistryHost("https", DOCKER_HUB_HOST)
    return RegistryHost("http" if _is_loopback(registry) else "https", registry)


def _host_dir(root: str, registry: str) -> str | None:
    # containerd: host:port is looked up as host_port_ (the last colon only, for IPv6).
    host, colon, port = registry.rpartition(":")
    for name in (f"{host}_{port}_" if colon and "]" not in port else None, registry,
                 "_default"):
        if name and os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def _from_hosts_toml(directory: str, registry: str) -> list[RegistryHost]:
    path = os.path.join(directory, "hosts.toml")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return [_default_host(registry)]
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HostsConfigError(f"{path}: {exc}") from exc
    hosts = []
    tables = doc.get("host") or {}
    if not isinstance(tables, dict):
        raise HostsConfigError(f"{path}: host must be a table of [host.\"URL\"] tables")
    for url, table in tables.items():   # TOML tables keep file order
        if not isinstance(table, dict):
            raise HostsConfigError(f'{path}: host."{url}" must be a table')
        hosts.append(_host(url, table, path, directory))
    server = doc.get("server")
    if server is None:
        own = _default_host(registry)
        hosts.append(_host(own.url[: -len("/v2")], doc, path, directory, top_level=True))
    else:
        if not isinstance(server, str):
            raise HostsConfigError(f"{path}: server must be a URL string")
        hosts.append(_host(server, doc, path, directory, top_level=True))
    return hosts


def _host(url: str, table: Mapping[str, Any], path: str, directory: str, *,
          top_level: bool = False) -> RegistryHost:
    where = f"{path}: " + ("" if top_level else f'host."{url}".')
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HostsConfigError(f"{where}{url!r} is not an http(s) URL")
    caps = table.get("capabilities", list(CAPABILITIES))
    if not isinstance(caps, list) or not all(c in CAPABILITIES for c in caps):
        raise HostsConfigError(f"{where}capabilities must be a list of {', '.join(CAPABILITIES)}")
    override = table.get("override_path", False)
    prefix = parts.path.rstrip("/")
    if not override and not prefix.endswith("/v2"):
        prefix += "/v2"
    skip = table.get("skip_verify", False)
    if not isinstance(skip, bool):
        raise HostsConfigError(f"{where}skip_verify must be true or false")
    ca = table.get("ca", [])
    ca = [ca] if isinstance(ca, str) else ca
    if not isinstance(ca, list) or not all(isinstance(c, str) for c in ca):
        raise HostsConfigError(f"{where}ca must be a path or a list of paths")
    client = table.get("client", [])
    client = [client] if isinstance(client, str) else client
    certs = []
    for entry in client if isinstance(client, list) else [None]:
        if isinstance(entry, str):
            certs.append((_rel(entry, directory), _rel(entry, directory)))
        elif isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
            certs.append((_rel(entry[0], directory), _rel(entry[1], directory)))
        else:
            raise HostsConfigError(f"{where}client must be a path, or [cert, key] pairs")
    headers: dict[str, tuple[str, ...]] = {}
    for key, value in (table.get("header") or {}).items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise HostsConfigError(f"{where}header.{key} must be a string or a list of strings")
        headers[key] = tuple(values)
    return RegistryHost(parts.scheme, parts.netloc, prefix, tuple(caps), skip,
                        tuple(_rel(c, directory) for c in ca), tuple(certs), headers)


def _rel(path: str, directory: str) -> str:
    return path if os.path.isabs(path) else os.path.join(directory, path)
