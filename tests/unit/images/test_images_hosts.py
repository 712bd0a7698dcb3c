"""Registry hosts as containerd's hosts.toml and legacy mirrors/configs give them."""

from __future__ import annotations

from pathlib import Path

import pytest

from images.hosts import Credentials, HostsConfigError, RegistryConfig


def write(root: Path, host_dir: str, text: str) -> Path:
    d = root / host_dir
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(text)
    return d


def test_defaults() -> None:
    cfg = RegistryConfig()
    assert [h.url for h in cfg.hosts("docker.io")] == ["https://registry-1.docker.io/v2"]
    assert [h.url for h in cfg.hosts("quay.io")] == ["https://quay.io/v2"]
    assert [h.url for h in cfg.hosts("localhost:5000")] == ["http://localhost:5000/v2"]
    assert [h.url for h in cfg.hosts("127.0.0.1:5000")] == ["http://127.0.0.1:5000/v2"]


def test_hosts_toml_order_and_settings(tmp_path: Path) -> None:
    d = write(tmp_path, "registry.k8s.io", '''
server = "https://registry.k8s.io"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
  header = {X-Mirror = "yes"}
[host."https://mirror.example:8443/prefix"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "ca.pem"
  client = [["c.pem", "k.pem"]]
[host."https://raw.example/v2/custom"]
  override_path = true
''')
    hosts = RegistryConfig(config_path=(str(tmp_path),)).hosts("registry.k8s.io")
    assert [h.url for h in hosts] == ["http://127.0.0.1:5000/v2", "https://mirror.example:8443/prefix/v2",
                                      "https://raw.example/v2/custom", "https://registry.k8s.io/v2"]
    local, mirror, raw, upstream = hosts
    assert local.capabilities == ("pull", "resolve") and local.headers == {"X-Mirror": ("yes",)}
    assert mirror.skip_verify and mirror.ca_files == (str(d / "ca.pem"),)
    assert mirror.client_certs == ((str(d / "c.pem"), str(d / "k.pem")),)
    assert not mirror.can("resolve") and mirror.can("pull")
    assert upstream.capabilities == ("pull", "resolve", "push", "referrers")


def test_host_dir_names_and_default(tmp_path: Path) -> None:
    write(tmp_path, "localhost_5000_", '[host."http://127.0.0.1:6000"]\n')
    write(tmp_path, "_default", '[host."http://127.0.0.1:7000"]\n')
    cfg = RegistryConfig(config_path=(str(tmp_path / "missing"), str(tmp_path)))
    assert [h.url for h in cfg.hosts("localhost:5000")][0] == "http://127.0.0.1:6000/v2"
    assert [h.url for h in cfg.hosts("gcr.io")] == ["http://127.0.0.1:7000/v2", "https://gcr.io/v2"]


def test_legacy_mirrors_and_configs() -> None:
    cfg = RegistryConfig(mirrors={"docker.io": ("127.0.0.1:5000", "https://m.example")},
                         configs={"m.example": {"auth": {"username": "u", "password": "p"},
                                                "tls": {"insecure_skip_verify": True}}})
    hosts = cfg.hosts("docker.io")
    assert [h.url for h in hosts] == ["http://127.0.0.1:5000/v2", "https://m.example/v2",
                                      "https://registry-1.docker.io/v2"]
    assert hosts[1].skip_verify and hosts[1].capabilities == ("pull", "resolve")
    assert cfg.credentials("m.example") == Credentials("u", "p")
    auth = RegistryConfig(configs={"r": {"auth": {"auth": "dTpw"}}})   # base64 "u:p"
    assert auth.credentials("r") == Credentials("u", "p")


@pytest.mark.parametrize("text,words", [
    ('[host."http://x"]\ncapabilities = ["fly"]\n', "capabilities must be a list of"),
    ('[host."ftp://x"]\n', "is not an http(s) URL"),
    ('[host."http://x"]\nskip_verify = "yes"\n', "skip_verify must be true or false"),
    ('server = 5\n', "server must be a URL string"),
    ('[host."http://x"\n', "hosts.toml"),
])
def test_bad_hosts_toml(tmp_path: Path, text: str, words: str) -> None:
    write(tmp_path, "r.example", text)
    with pytest.raises(HostsConfigError, match="hosts.toml") as exc:
        RegistryConfig(config_path=(str(tmp_path),)).hosts("r.example")
    assert words in str(exc.value)
