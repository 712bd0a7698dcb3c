"""The streaming server's TLS: the operator's key pair, or, as containerd does when
``enable_tls_streaming`` has no files, a self-signed one made at each start: an
ephemeral CA (``<hostname>-ca@<unix time>``) signing a server certificate
(``<hostname>@<unix time>``, RSA 2048, valid from an hour ago for a year) for the
hostname, ``localhost`` (crictl's default server name) and every address given."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Iterable

__all__ = ["server_context", "self_signed"]


def server_context(cert_file: str = "", key_file: str = "",
                   addresses: Iterable[str] = ("127.0.0.1", "::1")) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
        return ctx
    chain, key = self_signed(socket.gethostname(), addresses)
    # ssl loads a chain only from files: a private temporary directory, gone at once
    with tempfile.TemporaryDirectory(prefix="cri-shim-tls-") as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, chain), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def self_signed(hostname: str, addresses: Iterable[str]) -> tuple[bytes, bytes]:
    """(PEM chain: server then CA, PEM key) for *hostname* and *addresses*."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = int(time.time())
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{hostname}-ca@{stamp}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                       key_cert_sign=True, content_commitment=False,
                                       data_encipherment=False, key_agreement=False,
                                       crl_sign=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ips = []
    for a in addresses:
        try:
            ips.append(ipaddress.ip_address(a))
        except ValueError:
            pass
    names = [x509.DNSName(n) for n in dict.fromkeys([hostname, "localhost"])]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{hostname}@{stamp}")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names + [x509.IPAddress(i) for i in ips]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return chain, pem_key
