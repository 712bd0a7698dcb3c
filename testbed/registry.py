"""A local image registry (Debian's docker-registry, distribution 2.8) in a namespace.

``Registry`` serves on ``127.0.0.1:PORT`` inside one of our namespaces, its storage,
config and logs under ``<work>/registry-PORT/``. Optionally with htpasswd auth, with
token auth (then the token service below runs beside it on *token_port*) or with blob
GETs redirected (307) to a plain file server on *blob_port* over its storage.

``http()`` makes one HTTP request from inside a namespace (what a client there sees).
``python -m testbed.registry token-service ...`` is the token service: Docker's token
protocol (GET with Basic credentials, and the OAuth2 POST containerd tries first),
RS256 JWTs signed with ``openssl``, as distribution's ``auth.token`` checks them.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import parse_qs, urlparse

from .process import REPO, env, stop

__all__ = ["REGISTRY", "Registry", "Response", "http", "bcrypt", "main"]

REGISTRY = "/usr/bin/docker-registry"
DEFAULT_USERS = {"testuser": "testpassword"}


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status, headers (names lower-cased), body."""
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


_HTTP = r"""
import base64, json, sys, time, urllib.error, urllib.request as u
a = json.loads(sys.argv[1])
class Keep(u.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None
handlers = [u.ProxyHandler({})] + ([] if a["follow"] else [Keep()])
opener = u.build_opener(*handlers)
data = base64.b64decode(a["data"]) if a["data"] is not None else None
deadline = time.monotonic() + a["wait"]
while True:
    req = u.Request(a["url"], data=data, method=a["method"], headers=a["headers"])
    try:
        r = opener.open(req, timeout=a["timeout"]); status, hdrs, body = r.status, r.headers, r.read()
        break
    except urllib.error.HTTPError as e:
        status, hdrs, body = e.code, e.headers, e.read()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
print(json.dumps({"status": status, "headers": [[k.lower(), v] for k, v in hdrs.items()],
                  "body": base64.b64encode(body).decode()}))
"""


def http(ns: Any, method: str, url: str, *, headers: Mapping[str, str] | None = None,
         data: bytes | None = None, auth: tuple[str, str] | None = None, follow: bool = False,
         timeout: float = 10, wait: float = 0) -> Response:
    """One request to *url* from inside namespace *ns* (a Python there, no proxies);
    redirects are answers unless *follow*. *auth* adds Basic credentials. A refused
    connection is retried for *wait* seconds."""
    hdrs = dict(headers or {})
    if auth:
        hdrs["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    args = {"method": method, "url": url, "headers": hdrs, "follow": follow, "timeout": timeout,
            "wait": wait, "data": base64.b64encode(data).decode() if data is not None else None}
    proc = subprocess.run(["nsenter", f"--net={ns.path}", sys.executable, "-c", _HTTP, json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout + wait + 30, env=env())
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
        raise ConnectionError(f"{method} {url} in {ns.path}: {last}")
    out = json.loads(proc.stdout)
    headers_out: dict[str, str] = {}
    for k, v in out["headers"]:                       # repeated headers joined, as HTTP does
        headers_out[k] = f"{headers_out[k]}, {v}" if k in headers_out else v
    return Response(out["status"], headers_out, base64.b64decode(out["body"]))


def bcrypt(password: str, cost: int = 4) -> str:
    """A bcrypt hash (``$2b$``) through libcrypt, for htpasswd files (distribution
    accepts bcrypt only). Cost 4: distribution checks it on every request, and cost
    12 makes each one take 0.2 s."""
    import ctypes
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt_gensalt.restype = lib.crypt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", cost, os.urandom(16), 16)
    hashed = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2b$"):
        raise RuntimeError("libcrypt cannot make bcrypt hashes")
    return hashed.decode()


class Registry:
    """docker-registry serving ``http://127.0.0.1:<port>`` in namespace *ns* (anything
    with ``.path``), its files under ``<work>/registry-<port>/``.

    *auth*: None, "htpasswd" (Basic, bcrypt) or "token" (Bearer from the token service
    on *token_port*, default port+1000; *token_post* False makes it answer the OAuth2
    POST with 404, as a GET-only token server does). *users* (name -> password,
    default testuser/testpassword) are the accounts of either. *redirect* sends blob
    GETs to a file server on *blob_port* (default port+2000) with a 307. ``stop()``
    kills what it started and removes nothing; registries on other ports run beside.
    """

    def __init__(self, ns: Any, work: Path | str, *, port: int = 5000, auth: str | None = None,
                 users: Mapping[str, str] | None = None, redirect: bool = False,
                 token_port: int | None = None, blob_port: int | None = None,
                 token_post: bool = True) -> None:
        if auth not in (None, "htpasswd", "token"):
            raise ValueError(f"auth {auth!r}: None, 'htpasswd' or 'token'")
        self.ns, self.port, self.auth, self.redirect = ns, port, auth, redirect
        self.users = dict(users if users is not None else DEFAULT_USERS) if auth else {}
        self.dir = Path(work) / f"registry-{port}"
        self.root = self.dir / "storage"
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        self.service = f"testbed-registry-{port}"
        self.issuer = "testbed-token-issuer"
        self.token_port = token_port or port + 1000
        self.token_realm = f"http://127.0.0.1:{self.token_port}/token" if auth == "token" else ""
        self.token_post = token_post
        self.blob_port = blob_port or port + 2000
        self.blob_url = f"http://127.0.0.1:{self.blob_port}/" if redirect else ""
        self.procs: list[subprocess.Popen] = []

    @property
    def creds(self) -> str | None:
        """``user:password`` of the first user, when there is auth."""
        return next((f"{u}:{p}" for u, p in self.users.items()), None) if self.auth else None

    def config(self) -> dict[str, Any]:
        """distribution's configuration (YAML, written as JSON, which YAML reads)."""
        conf: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.root)}, "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if self.auth == "htpasswd":
            conf["auth"] = {"htpasswd": {"realm": self.service, "path": str(self.dir / "htpasswd")}}
        elif self.auth == "token":
            conf["auth"] = {"token": {"realm": self.token_realm, "service": self.service,
                                      "issuer": self.issuer, "rootcertbundle": str(self.dir / "token.crt")}}
        if self.redirect:
            conf["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": self.blob_url}}]}
        return conf

    def start(self, timeout: float = 30) -> "Registry":
        """Start the registry (and its token service or file server) and wait until
        ``GET /v2/`` answers (200, or 401 with auth)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        try:
            if self.auth == "htpasswd":
                (self.dir / "htpasswd").write_text(
                    "".join(f"{u}:{bcrypt(p)}\n" for u, p in self.users.items()))
            elif self.auth == "token":
                self._start_token_service()
            if self.redirect:
                self._spawn("blobs", sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                            "--directory", str(self.root), str(self.blob_port))
            (self.dir / "config.yml").write_text(json.dumps(self.config(), indent=1))
            self._spawn("registry", REGISTRY, "serve", str(self.dir / "config.yml"))
            urls = [self.url + "/v2/"] + [u for u in (self.token_realm, self.blob_url) if u]
            for url in urls:
                self._wait(url, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_token_service(self) -> None:
        key, crt = self.dir / "token.key", self.dir / "token.crt"
        if not crt.exists():
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
                            "-subj", f"/CN={self.issuer}", "-keyout", str(key), "-out", str(crt)],
                           check=True, capture_output=True, timeout=60)
        users = self.dir / "token-users.json"
        users.write_text(json.dumps(self.users))
        self._spawn("token", sys.executable, "-m", "testbed.registry", "token-service",
                    "--port", str(self.token_port), "--key", str(key), "--cert", str(crt),
                    "--service", self.service, "--issuer", self.issuer, "--users", str(users),
                    *([] if self.token_post else ["--no-post"]))

    def _spawn(self, name: str, *cmd: str) -> None:
        with open(self.dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(["nsenter", f"--net={self.ns.path}", *cmd], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env(), cwd=str(REPO), start_new_session=True)
        self.procs.append(proc)

    def _wait(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[2]} exited {proc.returncode}:\n{self.log()}")
            try:
                http(self.ns, "GET", url, timeout=2, wait=1)
                break
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing answers {url} in {self.ns.path}:\n{self.log()}")
        for proc in self.procs:   # nsenter exec'ed each: they run in the namespace, not ours
            assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino == os.stat(self.ns.path).st_ino

    @property
    def pids(self) -> list[int]:
        """The pids of its processes still running (the registry, token service, file server)."""
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        """Kill every process it started (data and logs stay in its dir)."""
        for proc in reversed(self.procs):
            stop(proc, timeout=10)
        self.procs = []

    def log(self, lines: int = 40) -> str:
        """The last *lines* of each of its logs."""
        out = []
        for path in sorted(self.dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        """``http()`` to *path* on this registry (e.g. ``/v2/busybox/manifests/latest``)."""
        return http(self.ns, method, path if "://" in path else self.url + path, **kwargs)

    def __enter__(self) -> "Registry":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the token service ------------------------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _TokenHandler(BaseHTTPRequestHandler):
    """Docker's token protocol for one service (its settings on the server)."""
    server: Any

    def log_message(self, fmt: str, *args: Any) -> None:
        sys.stderr.write(f"token: {fmt % args}\n")
        sys.stderr.flush()

    def _reply(self, code: int, body: Mapping[str, Any], challenge: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if challenge:
            self.send_header("WWW-Authenticate", f'Basic realm="{self.server.service}"')
        self.end_headers()
        self.wfile.write(data)

    def _token(self, sub: str, scopes: Sequence[str]) -> str:
        access = []
        for scope in scopes:                          # repository:NAME:pull,push
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.server.x5c]}
        # distribution 2.8 wants aud a plain string
        claims = {"iss": self.server.issuer, "sub": sub, "aud": self.server.service,
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
                  "access": access}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.server.key],
                             input=signing.encode(), capture_output=True, check=True).stdout
        return f"{signing}.{_b64url(sig)}"

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        if query.get("service", [""])[0] != self.server.service:
            return self._reply(400, {"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]})
        user, _, password = "", "", ""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode(errors="replace").partition(":")
        if not user or self.server.users.get(user) != password:
            return self._reply(401, {"details": "credentials required"}, challenge=True)
        token = self._token(user, query.get("scope", []))
        self._reply(200, {"token": token, "access_token": token, "expires_in": 300,
                          "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def do_POST(self) -> None:   # OAuth2 (grant_type password or refresh_token)
        if self.server.no_post:
            return self._reply(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if form.get("service") != self.server.service:
            return self._reply(400, {"error": "invalid_request"})
        grant, user = form.get("grant_type"), ""
        if grant == "password" and self.server.users.get(form.get("username", "")) == form.get("password"):
            user = form["username"]
        elif grant == "refresh_token":
            user = self.server.refresh.get(form.get("refresh_token", ""), "")
        if not user:
            return self._reply(401, {"error": "invalid_grant"})
        refresh = secrets.token_hex(16)
        self.server.refresh[refresh] = user
        scopes = form.get("scope", "").split()
        self._reply(200, {"access_token": self._token(user, scopes), "refresh_token": refresh,
                          "expires_in": 300, "scope": " ".join(scopes),
                          "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m testbed.registry token-service --port P --key K --cert C ...``."""
    parser = argparse.ArgumentParser(prog="testbed.registry")
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("token-service", help="serve Docker's token protocol")
    tok.add_argument("--port", type=int, required=True)
    tok.add_argument("--key", required=True)
    tok.add_argument("--cert", required=True)
    tok.add_argument("--service", required=True)
    tok.add_argument("--issuer", required=True)
    tok.add_argument("--users", required=True, help="JSON file: name -> password")
    tok.add_argument("--no-post", action="store_true", help="answer the OAuth2 POST with 404")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _TokenHandler)
    der = subprocess.run(["openssl", "x509", "-in", args.cert, "-outform", "DER"],
                         capture_output=True, check=True).stdout
    server.x5c = base64.b64encode(der).decode()   # std base64, as distribution decodes x5c
    server.key, server.service, server.issuer = args.key, args.service, args.issuer
    server.users = json.loads(Path(args.users).read_text())
    server.no_post, server.refresh = args.no_post, {}
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
