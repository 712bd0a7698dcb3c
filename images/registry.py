"""The distribution API client: resolve a reference, fetch manifests and blobs.

Written on urllib3 rather than a registry library: python-dxf fails on OCI manifests
without a top-level ``mediaType`` and refuses any auth over plain HTTP; oras-py writes
blobs without checking their digest and retries for minutes; neither knows containerd's
mirrors, per-host TLS, ``?ns=`` or identity tokens (docs/images.md says more).

What it does as containerd's ``remotes/docker`` does:

- hosts are tried in ``images.hosts`` order, those with the needed capability
  (``resolve`` for a tag, ``pull`` for a digest); a transport error, 404 or other error
  answer moves on to the next host, and the error reported is the one that got
  furthest (transport < not found < other answers);
- a manifest request carries ``Accept`` with the four manifest types and ``*/*``, and
  ``?ns=<registry>`` when the host is not the image's own registry (a mirror);
- each host gets its own credentials: the client's (kubelet's) unless they name another
  server, else ``registry.configs."<host>".auth``;
- 401 answers are met with the challenge's scheme: Basic with the credentials, or a
  Bearer token for ``repository:<path>:pull`` from the realm (POST of the OAuth form
  first when there are credentials, GET as fallback), cached per host, scope and
  credentials (at most 256 kept);
- blob redirects are followed (at most 10); another host (or scheme) gets no
  Authorization, no hosts.toml headers and no per-host TLS settings;
- bytes are counted and hashed as they arrive (``images.content.Writer``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3

from .errors import AuthFailed, HostsConfigError, ImageError, ImageNotFound, RegistryUnavailable
from .hosts import DOCKER_HUB, DOCKER_HUB_HOST, Credentials, RegistryConfig, RegistryHost
from .manifest import ACCEPT, MAX_MANIFEST, Descriptor
from .reference import Reference

__all__ = ["RegistryClient", "Resolved"]

log = logging.getLogger(__name__)

USER_AGENT = "cri-shim/0.1.0"
MAX_REDIRECTS = 10
MAX_TOKENS = 256   # cached authorizations (host, scope, credentials)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resolved:
    """A reference resolved on *host*: the descriptor of its manifest or index."""

    descriptor: Descriptor
    host: RegistryHost


class _Failure(Exception):
    """One host's failure; ``rank`` orders how far it got."""

    def __init__(self, rank: int, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.rank, self.status = rank, status


_TRANSPORT, _NOT_FOUND, _ANSWER, _AUTH = 0, 1, 2, 3


class RegistryClient:
    """Talks to registries as *config* configures them; thread-safe."""

    def __init__(self, config: RegistryConfig, *, connect_timeout: float = 10,
                 read_timeout: float = 60,
                 transport: Callable[[RegistryHost | None], Any] | None = None) -> None:
        """*transport* makes the connection pool for a host (None: an unconfigured
        one); by default a ``urllib3.PoolManager`` with the host's TLS settings. Tests
        give one that answers from a script."""
        self.config = config
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._transport = transport or self._pool_manager
        self._pools: dict[RegistryHost | None, Any] = {}
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}   # see _token_key
        self._lock = threading.Lock()

    # -- the API --------------------------------------------------------------------

    def resolve(self, ref: Reference, creds: Credentials | None = None) -> Resolved:
        """The manifest (or index) descriptor for *ref*: HEAD, then GET when the answer
        lacks the digest or length. Raises ``ImageNotFound``, ``AuthFailed`` or
        ``RegistryUnavailable``."""
        capability = "pull" if ref.digest else "resolve"

        def attempt(host: RegistryHost) -> Resolved:
            url = self._url(host, ref, f"manifests/{ref.object}")
            resp = self._request(host, ref, "HEAD", url, {"Accept": ACCEPT}, creds)
            digest = resp.headers.get("Docker-Content-Digest", "")
            length = resp.headers.get("Content-Length")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            if ref.digest:
                digest = ref.digest
            if not digest or length is None or not media_type:
                data, media_type = self._get_manifest(host, ref, url, creds)
                digest = ref.digest or "sha256:" + hashlib.sha256(data).hexdigest()
                length = str(len(data))
            return Resolved(Descriptor(media_type, digest, int(length)), host)

        return self._each_host(ref, capability, attempt)

    def fetch_manifest(self, ref: Reference, desc: Descriptor,
                       creds: Credentials | None = None) -> bytes:
        """The bytes of the manifest or index *desc* (checked by the caller)."""
        if desc.size > MAX_MANIFEST:
            raise ImageError(f"{ref}: manifest of {desc.size} bytes is larger than {MAX_MANIFEST}")

        def attempt(host: RegistryHost) -> bytes:
            url = self._url(host, ref, f"manifests/{desc.digest}")
            return self._get_manifest(host, ref, url, creds, accept=desc.media_type)[0]

        return self._each_host(ref, "pull", attempt)

    def fetch_blob(self, ref: Reference, desc: Descriptor, write: Callable[[bytes], None],
                   creds: Credentials | None = None) -> None:
        """Stream blob *desc* into *write*, following redirects. A host that fails
        before the first byte gives way to the next; one that fails after raises."""
        def attempt(host: RegistryHost) -> None:
            url = self._url(host, ref, f"blobs/{desc.digest}")
            resp = self._request(host, ref, "GET", url, {"Accept": f"{desc.media_type}, */*"},
                                 creds, stream=True)
            try:
                for chunk in resp.stream(_CHUNK, decode_content=False):
                    write(chunk)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ImageError(f"{ref}: download of {desc.digest} from {host.host} broke "
                                 f"off: {exc}") from None
            finally:
                resp.release_conn()

        self._each_host(ref, "pull", attempt)

    # -- hosts and requests -----------------------------------------------------------

    def _each_host(self, ref: Reference, capability: str, attempt: Callable[[RegistryHost], Any]) -> Any:
        hosts = [h for h in self.config.hosts(ref.domain) if h.can(capability)]
        if not hosts:
            raise RegistryUnavailable(f"{ref}: no host of {ref.domain} may {capability}")
        worst: _Failure | None = None
        for host in hosts:
            try:
                return attempt(host)
            except _Failure as exc:
                log.info("registry %s: %s", host.url, exc)
                if worst is None or exc.rank >= worst.rank:
                    worst = exc
        assert worst is not None
        tried = tuple(h.url for h in hosts)
        if worst.rank == _NOT_FOUND:
            raise ImageNotFound(f"{ref}: not found ({worst})")
        if worst.rank == _AUTH:
            raise AuthFailed(f"{ref}: {worst}")
        if worst.rank == _TRANSPORT:
            raise RegistryUnavailable(f"{ref}: no registry host answered (tried "
                                      f"{', '.join(tried)}): {worst}", tried)
        raise ImageError(f"{ref}: {worst}")

    def _url(self, host: RegistryHost, ref: Reference, tail: str) -> str:
        url = f"{host.url}/{ref.path}/{tail}"
        own = host.host == ref.domain or (ref.domain == DOCKER_HUB and host.host == DOCKER_HUB_HOST)
        return url if own else f"{url}?{urlencode({'ns': ref.domain})}"

    def _get_manifest(self, host: RegistryHost, ref: Reference, url: str,
                      creds: Credentials | None, accept: str = ACCEPT) -> tuple[bytes, str]:
        resp = self._request(host, ref, "GET", url, {"Accept": accept}, creds, stream=True)
        try:
            data = resp.read(MAX_MANIFEST + 1, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Failure(_TRANSPORT, f"{host.host}: reading the manifest broke off: "
                                       f"{_reason(exc)}") from None
        finally:
            resp.release_conn()
        if len(data) > MAX_MANIFEST:
            raise _Failure(_ANSWER, f"manifest larger than {MAX_MANIFEST} bytes")
        return data, resp.headers.get("Content-Type", "").split(";")[0].strip()

    def _pool(self, host: RegistryHost | None) -> urllib3.PoolManager:
        with self._lock:
            pool = self._pools.get(host)
            if pool is None:
                pool = self._pools[host] = self._transport(host)
            return pool

    def _pool_manager(self, host: RegistryHost | None) -> urllib3.PoolManager:
        """A pool with *host*'s TLS settings (None: a host that is not configured,
        such as a redirect's target: the system's defaults)."""
        kw: dict[str, Any] = {}
        if host is not None and host.scheme == "https":
            ctx = ssl.create_default_context()
            if host.skip_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            try:
                for ca in host.ca_files:
                    ctx.load_verify_locations(ca)
                for cert, key in host.client_certs:
                    ctx.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                raise HostsConfigError(f"{host.host}: the CA or client certificate files "
                                       f"cannot be used: {exc}") from None
            kw["ssl_context"] = ctx
        return urllib3.PoolManager(num_pools=4, maxsize=8, timeout=self._timeout, retries=False, **kw)

    def _request(self, host: RegistryHost, ref: Reference, method: str, url: str,
                 headers: dict[str, str], given: Credentials | None, *, stream: bool = False
                 ) -> urllib3.BaseHTTPResponse:
        """One request to *host*, answering its 401 challenge and following redirects.
        Authorization and the hosts.toml headers go only to *host* itself (same scheme,
        host and port); a redirect elsewhere gets neither, and the system's TLS
        settings rather than the host's."""
        creds = self.config.credentials_for(host.host, given)
        scope = f"repository:{ref.path}:pull"
        own = {"User-Agent": USER_AGENT, **{k: ", ".join(v) for k, v in host.headers.items()},
               **headers}
        elsewhere = {"User-Agent": USER_AGENT, **headers}
        auth = self._cached_auth(host, scope, creds)
        fresh = False   # whether auth was made for this request (not from the cache)
        for redirect in range(MAX_REDIRECTS + 2):
            parts = urlsplit(url)
            same_host = (parts.scheme, parts.netloc) == (host.scheme, host.host)
            send = {**own, **({"Authorization": auth} if auth else {})} if same_host else elsewhere
            try:
                resp = self._pool(host if same_host else None).request(
                    method, url, headers=send, redirect=False, preload_content=False,
                    decode_content=False)
            except (urllib3.exceptions.HTTPError, OSError, ssl.SSLError) as exc:
                raise _Failure(_TRANSPORT, f"{urlsplit(url).netloc}: {_reason(exc)}") from None
            if resp.status == 401 and same_host and not fresh:
                challenge = resp.headers.get("WWW-Authenticate", "")
                _drain(resp)
                auth, fresh = self._authorize(host, challenge, scope, creds), True
                continue
            if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                _drain(resp)
                url = urljoin(url, resp.headers["Location"])
                if redirect == MAX_REDIRECTS:
                    raise _Failure(_ANSWER, f"more than {MAX_REDIRECTS} redirects")
                continue
            if resp.status >= 400:
                message = _error_text(resp)
                if resp.status == 404:
                    raise _Failure(_NOT_FOUND, message, 404)
                if resp.status in (401, 403):
                    raise _Failure(_AUTH, f"{host.host} refused access: {message}", resp.status)
                raise _Failure(_ANSWER, f"{host.host} answered {message}", resp.status)
            if not stream:
                _drain(resp)
            return resp
        raise _Failure(_ANSWER, "authorization loop")

    # -- auth ---------------------------------------------------------------------------

    def _cached_auth(self, host: RegistryHost, scope: str, creds: Credentials) -> str | None:
        with self._lock:
            token = self._tokens.get(_token_key(host, scope, creds))
        if token and token[1] > time.monotonic():
            return token[0]
        return None

    def _authorize(self, host: RegistryHost, challenge: str, scope: str,
                   creds: Credentials) -> str:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if not (creds.username or creds.password):
                raise _Failure(_AUTH, f"{host.host} wants credentials (Basic) and none were given")
            value = _basic(creds)
            expires = time.monotonic() + 3600
        elif scheme == "bearer":
            if creds.registry_token:
                value, expires = f"Bearer {creds.registry_token}", time.monotonic() + 60
            else:
                token, ttl = self._fetch_token(host, params, scope, creds)
                value, expires = f"Bearer {token}", time.monotonic() + max(ttl - 10, 1)
        else:
            raise _Failure(_AUTH, f"{host.host} asks for unsupported authorization {challenge!r}")
        with self._lock:
            if len(self._tokens) >= MAX_TOKENS:   # drop the expired, else the oldest
                now = time.monotonic()
                for key in [k for k, (_, at) in self._tokens.items() if at <= now] or \
                        [next(iter(self._tokens))]:
                    del self._tokens[key]
            self._tokens[_token_key(host, scope, creds)] = (value, expires)
        return value

    def _fetch_token(self, host: RegistryHost, params: dict[str, str], scope: str,
                     creds: Credentials) -> tuple[str, float]:
        realm = params.get("realm")
        if not realm:
            raise _Failure(_AUTH, f"{host.host}: Bearer challenge without a realm")
        scope = params.get("scope", scope)
        service = params.get("service", "")
        pool = self._pool(host)
        answer = None
        if creds.username or creds.identity_token:
            form = {"scope": scope, "service": service, "client_id": "containerd-client"}
            if creds.identity_token:
                form.update(grant_type="refresh_token", refresh_token=creds.identity_token)
            else:
                form.update(grant_type="password", username=creds.username,
                            password=creds.password)
            answer = self._token_request(pool, "POST", realm, {}, urlencode(form).encode())
            if answer[0] in (400, 401, 404, 405) and not creds.identity_token:
                answer = None   # no OAuth form here: the GET with Basic below
        if answer is None:
            headers = {}
            if creds.username:
                headers["Authorization"] = _basic(creds)
            query = urlencode({"service": service, "scope": scope})
            answer = self._token_request(pool, "GET", f"{realm}?{query}", headers, None)
        status, body = answer
        if status != 200:
            raise _Failure(_AUTH, f"token service {realm} answered {status}: {body[:300]!r}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            ttl = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token, ttl = None, 60.0
        if not token:
            raise _Failure(_AUTH, f"token service {realm} gave no token")
        return token, ttl

    def _token_request(self, pool: urllib3.PoolManager, method: str, url: str,
                       headers: dict[str, str], body: bytes | None) -> tuple[int, bytes]:
        if body is not None:
            headers = dict(headers, **{"Content-Type": "application/x-www-form-urlencoded"})
        try:
            resp = pool.request(method, url, headers={"User-Agent": USER_AGENT, **headers},
                                body=body, redirect=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Failure(_TRANSPORT, f"token service {urlsplit(url).netloc}: {_reason(exc)}") from None
        return resp.status, resp.data


def _basic(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


def _token_key(host: RegistryHost, scope: str, creds: Credentials) -> tuple[str, str, str]:
    """Tokens are cached per host, scope and credentials (a hash of them): a pull with
    other credentials never gets another's token."""
    who = hashlib.sha256(repr(creds).encode()).hexdigest()
    return host.host, scope, who


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {m[1].lower(): (m[2] if m[2] is not None else m[3]) for m in
              _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def _drain(resp: urllib3.BaseHTTPResponse) -> None:
    try:
        resp.drain_conn()
    finally:
        resp.release_conn()


def _error_text(resp: urllib3.BaseHTTPResponse) -> str:
    """``<status>``, and the registry's own error messages when it sent any."""
    try:
        body = resp.read(8192)
    except urllib3.exceptions.HTTPError:
        body = b""
    finally:
        resp.release_conn()
    try:
        errors = json.loads(body).get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                         for e in errors if isinstance(e, dict))
    except (ValueError, AttributeError):
        text = body.decode("utf-8", "replace").strip()[:200]
    return f"{resp.status} {resp.reason or ''}".strip() + (f" ({text})" if text else "")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)
