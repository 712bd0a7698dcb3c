"""containerd's streaming server keys, in ``[plugins."io.containerd.grpc.v1.cri"]``
(in a version 3 file too): ``stream_server_address`` (127.0.0.1),
``stream_server_port`` ("0": a free port), ``stream_idle_timeout`` (a Go duration,
"4h0m0s"), ``enable_tls_streaming`` and ``x509_key_pair_streaming`` with
``tls_cert_file`` and ``tls_key_file``, refused in the combinations containerd refuses."""

from __future__ import annotations

import re
from typing import Any, Mapping

from streaming.server import StreamConfig

from .errors import ConfigFileError

__all__ = ["stream_config", "parse_duration"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string ("4h0m0s", "1.5h", "300ms", "0").
    Raises ValueError."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total, at = 0.0, 0
    while at < len(s):
        m = _PART.match(s, at)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        at = m.end()
    return sign * total


def stream_config(source: str, table: Mapping[str, Any], where: str) -> StreamConfig:
    """The streaming settings of the CRI table *table* (named *where* in errors)."""
    d = StreamConfig()

    def fail(key: str, want: str) -> ConfigFileError:
        return ConfigFileError(f"{source}: {where}.{key} must be {want}, not "
                               f"{type(table[key]).__name__} {table[key]!r}")
    address = table.get("stream_server_address", d.address)
    if not isinstance(address, str):
        raise fail("stream_server_address", "a string")
    port = table.get("stream_server_port", str(d.port))
    if isinstance(port, bool) or not isinstance(port, (str, int)) or not str(port).isdigit() \
            or int(port) > 65535:
        raise fail("stream_server_port", 'a port number ("0": any free port)')
    idle = table.get("stream_idle_timeout", "4h0m0s")
    try:
        idle_s = parse_duration(idle) if isinstance(idle, str) else None
    except ValueError:
        idle_s = None
    if idle_s is None or idle_s < 0:
        raise fail("stream_idle_timeout", 'a duration such as "4h0m0s"')
    tls = table.get("enable_tls_streaming", False)
    if not isinstance(tls, bool):
        raise fail("enable_tls_streaming", "true or false")
    pair = table.get("x509_key_pair_streaming", {})
    if not isinstance(pair, dict):
        raise ConfigFileError(f"{source}: {where}.x509_key_pair_streaming must be a table")
    files = {}
    for key in ("tls_cert_file", "tls_key_file"):
        value = pair.get(key, "")
        if not isinstance(value, str):
            raise ConfigFileError(f"{source}: {where}.x509_key_pair_streaming.{key} must be a string")
        files[key] = value
    cert, key_file = files["tls_cert_file"], files["tls_key_file"]
    if (cert or key_file) and not tls:
        which = "TLSCertFile" if cert else "TLSKeyFile"
        raise ConfigFileError(f"{source}: {where}: X509KeyPairStreaming.{which} is set but "
                              "EnableTLSStreaming is not set")
    if bool(cert) != bool(key_file):
        raise ConfigFileError(f"{source}: {where}: must set X509KeyPairStreaming."
                              f"{'TLSKeyFile' if cert else 'TLSCertFile'}")
    return StreamConfig(address=address or d.address, port=int(port), idle_timeout=idle_s,
                        tls=tls, cert_file=cert, key_file=key_file)
