"""The registry client against a scripted transport: auth, redirects, per-host
credentials, transport errors (no sockets)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import urllib3

from images.errors import AuthFailed, RegistryUnavailable
from images.hosts import Credentials, RegistryConfig, RegistryHost
from images.manifest import Descriptor
from images.reference import parse
from images.registry import MAX_TOKENS, RegistryClient

BLOB = b"layer bytes"
BLOB_DIGEST = "sha256:" + __import__("hashlib").sha256(BLOB).hexdigest()


@dataclass
class Sent:
    pool: str
    method: str
    url: str
    headers: dict[str, str]


@dataclass
class Script:
    """Answers requests with ``handler(method, url, headers)`` -> (status, headers, body)."""

    handler: Callable[[str, str, dict[str, str]], tuple[int, dict[str, str], bytes]]
    sent: list[Sent] = field(default_factory=list)

    def transport(self, host: RegistryHost | None) -> Any:
        script = self

        class Pool:
            def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                        body: Any = None, **_: Any) -> urllib3.BaseHTTPResponse:
                headers = dict(headers or {})
                script.sent.append(Sent(host.host if host else "(other)", method, url, headers))
                status, resp_headers, data = script.handler(method, url, headers)
                return urllib3.HTTPResponse(body=io.BytesIO(data), headers=resp_headers,
                                            status=status, preload_content=False)
        return Pool()


def client(handler: Callable, config: RegistryConfig | None = None) -> tuple[RegistryClient, Script]:
    script = Script(handler)
    return RegistryClient(config or RegistryConfig(), transport=script.transport), script


def fetch(c: RegistryClient, image: str, creds: Credentials | None = None) -> bytes:
    out = io.BytesIO()
    c.fetch_blob(parse(image), Descriptor("application/octet-stream", BLOB_DIGEST, len(BLOB)),
                 out.write, creds)
    return out.getvalue()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_challenge_is_answered_once_and_then_cached() -> None:
    def handler(method: str, url: str, headers: dict[str, str]):
        if headers.get("Authorization") != basic("u", "p"):
            return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
        return 200, {}, BLOB
    c, script = client(handler)
    creds = Credentials("u", "p")
    assert fetch(c, "127.0.0.1:5000/app:1", creds) == BLOB
    assert fetch(c, "127.0.0.1:5000/app:1", creds) == BLOB
    assert [s.headers.get("Authorization") for s in script.sent] == [None, basic("u", "p"),
                                                                      basic("u", "p")]
    with pytest.raises(AuthFailed, match="wants credentials"):
        fetch(c, "127.0.0.1:5000/app:1")


def test_bearer_tokens_are_per_credentials() -> None:
    def handler(method: str, url: str, headers: dict[str, str]):
        if url.startswith("http://auth.test/token"):
            user = "alice" if "alice" in url or method == "POST" else "anon"
            return 200, {}, json.dumps({"token": f"tok-{user}", "expires_in": 300}).encode()
        if not headers.get("Authorization", "").startswith("Bearer tok-"):
            return 401, {"WWW-Authenticate": 'Bearer realm="http://auth.test/token",'
                                              'service="reg",scope="repository:app:pull"'}, b""
        return 200, {}, BLOB
    c, script = client(handler)
    fetch(c, "127.0.0.1:5000/app:1", Credentials("alice", "pw"))
    fetch(c, "127.0.0.1:5000/app:1", Credentials("alice", "pw"))     # cached
    fetch(c, "127.0.0.1:5000/app:1")                                  # no creds: its own token
    tokens = [s for s in script.sent if "auth.test" in s.url]
    assert [t.method for t in tokens] == ["POST", "GET"]
    blob_auth = [s.headers.get("Authorization") for s in script.sent if "blobs" in s.url]
    assert blob_auth == [None, "Bearer tok-alice", "Bearer tok-alice", None, "Bearer tok-anon"]


def test_a_redirect_elsewhere_gets_no_authorization_headers_or_host_tls(tmp_path) -> None:
    (tmp_path / "127.0.0.1_5000_").mkdir()
    (tmp_path / "127.0.0.1_5000_" / "hosts.toml").write_text(
        'server = "http://127.0.0.1:5000"\n[header]\n  X-Secret = "s3cret"\n')
    config = RegistryConfig(config_path=(str(tmp_path),))

    def handler(method: str, url: str, headers: dict[str, str]):
        if url.startswith("http://127.0.0.1:5000/"):
            if headers.get("Authorization") != basic("u", "p"):
                return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
            return 307, {"Location": "https://127.0.0.1:5000/then-elsewhere"}, b""
        if url.startswith("https://127.0.0.1:5000/"):   # same host and port, not scheme
            return 302, {"Location": "http://cdn.test/blob"}, b""
        return 200, {}, BLOB
    c, script = client(handler, config)
    assert fetch(c, "127.0.0.1:5000/app:1", Credentials("u", "p")) == BLOB
    assert script.sent[1].headers["X-Secret"] == "s3cret" and "Authorization" in script.sent[1].headers
    for s in script.sent[2:]:
        assert "Authorization" not in s.headers and "X-Secret" not in s.headers, s
        assert s.pool == "(other)"


def test_each_host_gets_its_own_credentials(tmp_path) -> None:
    """A mirror of registry.k8s.io: kubelet's credentials for registry.k8s.io are not
    sent to the mirror; the table's are looked up by the mirror's own host."""
    d = tmp_path / "registry.k8s.io"
    d.mkdir()
    (d / "hosts.toml").write_text('server = "https://registry.k8s.io"\n'
                                  '[host."http://127.0.0.1:5000"]\n'
                                  '  capabilities = ["pull", "resolve"]\n')
    seen: list[tuple[str, str | None]] = []

    def handler(method: str, url: str, headers: dict[str, str]):
        seen.append((url.split("/")[2], headers.get("Authorization")))
        if headers.get("Authorization") is None:
            return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
        return 200, {}, BLOB
    table = {"127.0.0.1:5000": {"auth": {"username": "mirror", "password": "m"}},
             "registry.k8s.io": {"auth": {"username": "upstream", "password": "u"}}}
    c, _ = client(handler, RegistryConfig(config_path=(str(tmp_path),), configs=table))
    image = "registry.k8s.io/pause:3.9"
    fetch(c, image)   # none from kubelet: the table's, per host
    assert seen[:2] == [("127.0.0.1:5000", None), ("127.0.0.1:5000", basic("mirror", "m"))]
    seen.clear()
    fetch(c, image, Credentials("kube", "k"))   # kubelet's, no server named: every host
    assert seen[-1] == ("127.0.0.1:5000", basic("kube", "k"))
    seen.clear()
    # kubelet's for registry.k8s.io only: the mirror is refused without them, and the
    # next host, registry.k8s.io itself, gets them.
    fetch(c, image, Credentials("kube", "k", server="registry.k8s.io"))
    assert seen == [("127.0.0.1:5000", None), ("registry.k8s.io", None),
                    ("registry.k8s.io", basic("kube", "k"))]


def test_a_manifest_read_that_breaks_off_is_a_transport_failure() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            raise urllib3.exceptions.ProtocolError("connection reset")

    def transport(host: RegistryHost | None) -> Any:
        class Pool:
            def request(self, method: str, url: str, **_: Any) -> urllib3.BaseHTTPResponse:
                return urllib3.HTTPResponse(body=Broken(), headers={"Content-Type":
                                            "application/vnd.oci.image.manifest.v1+json"},
                                            status=200, preload_content=False)
        return Pool()
    c = RegistryClient(RegistryConfig(), transport=transport)
    with pytest.raises(RegistryUnavailable, match="reading the manifest broke off"):
        c.resolve(parse("127.0.0.1:5000/app:1"))


def test_the_token_cache_is_bounded() -> None:
    def handler(method: str, url: str, headers: dict[str, str]):
        if "Authorization" not in headers:
            return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
        return 200, {}, BLOB
    c, _ = client(handler)
    for i in range(MAX_TOKENS + 20):
        fetch(c, f"127.0.0.1:5000/app{i}:1", Credentials("u", "p"))
    assert len(c._tokens) <= MAX_TOKENS
