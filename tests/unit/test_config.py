"""The containerd-style TOML config: both layouts, defaults, overrides, bad input."""

from __future__ import annotations

import pytest

from cri_shim import config
from cri_shim.errors import ConfigFileError

V2 = '''
version = 2
root = "/r"
state = "/s"
[grpc]
  address = "/s/sock"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/opt/cni/bin"
  conf_dir = "/etc/cni/net.d"
  max_conf_num = 2
  ip_pref = "ipv6"
'''

V3 = '''
version = 3
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/a", "/b"]
  conf_dir = "/c"
  use_internal_loopback = true
'''


def test_embedded_default() -> None:
    cfg = config.load(None)
    assert cfg.cni.bin_dirs == ("/opt/cni/bin", "/usr/lib/cni")
    assert cfg.cni.conf_dir == "/etc/cni/net.d"
    assert cfg.address == "/run/cri-shim/cri-shim.sock"
    assert cfg.cni.max_conf_num == 1
    assert cfg.cgroup_driver == "cgroupfs"   # containerd 2.0: no SystemdCgroup, no systemd here
    assert sorted(cfg.containers.runtimes) == ["crun", "runc"] and cfg.containers.default_runtime == "runc"


def test_version2_layout() -> None:
    cfg = config.parse(V2, source="t.toml")
    assert (cfg.root, cfg.state, cfg.address) == ("/r", "/s", "/s/sock")
    assert cfg.cni.bin_dirs == ("/opt/cni/bin",)
    assert cfg.cni.max_conf_num == 2
    assert cfg.cni.ip_pref == "ipv6"


def test_version3_layout() -> None:
    cfg = config.parse(V3, source="t.toml")
    assert cfg.cni.bin_dirs == ("/a", "/b")
    assert cfg.cni.conf_dir == "/c"
    assert cfg.cni.use_internal_loopback is True


def test_systemd_cgroup_from_runc_options() -> None:
    text = V2 + '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\nSystemdCgroup = false\n'
    assert config.parse(text, source="t").cgroup_driver == "cgroupfs"


@pytest.mark.parametrize("text, words", [
    ('[plugins."io.containerd.grpc.v1.cri".cni]\nbin_dir = "/a"\nbin_dirs = ["/b"]\n',
     "`bin_dir` and `bin_dirs` are both set"),
    ("root = [\n", "invalid TOML"),
    ('[plugins."io.containerd.grpc.v1.cri".cni]\nmax_conf_num = "one"\n',
     'plugins."io.containerd.grpc.v1.cri".cni.max_conf_num must be an integer'),
    ('[plugins."io.containerd.grpc.v1.cri".cni]\nip_pref = "ipv5"\n', "ip_pref = 'ipv5'"),
    ('[plugins."io.containerd.grpc.v1.cri".cni]\nbin_dirs = []\n', "must name at least one"),
    ('[plugins."io.containerd.grpc.v1.cri".cni]\n[plugins."io.containerd.cri.v1.runtime".cni]\n',
     "both"),
    ("version = 7\n", "unsupported config version"),
    # containerd's version 1 layout: no version key, [plugins.cri]; never half-read.
    ('[plugins.cri.cni]\nbin_dir = "/a"\nconf_dir = "/b"\n',
     'version 1 config (no `version` key, CRI settings in [plugins.cri]) is not read: '
     'move [plugins.cri.cni] to [plugins."io.containerd.grpc.v1.cri".cni] and add `version = 2`'),
    ('[plugins.cri]\nsandbox_image = "p"\n[plugins.cri.cni]\nconf_dir = "/b"\n'
     '[plugins.cri.registry]\nconfig_path = "/r"\n',
     "the keys of [plugins.cri] to [plugins.\"io.containerd.grpc.v1.cri\"], [plugins.cri.cni] to "
     '[plugins."io.containerd.grpc.v1.cri".cni], [plugins.cri.registry] to '
     '[plugins."io.containerd.grpc.v1.cri".registry]'),
    ('version = 1\n[plugins.cri.cni]\nconf_dir = "/b"\n', "version 1 config"),
    ('version = 1\n', "version 1 config"),
    ('[grpc]\naddress = 5\n', "grpc.address must be a string"),
])
def test_bad_config_names_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ConfigFileError) as exc:
        config.parse(text, source="bad.toml")
    assert "bad.toml" in str(exc.value)
    assert words in str(exc.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read config file"):
        config.load(str(tmp_path / "nope.toml"))


def test_registry_settings_in_both_layouts(tmp_path) -> None:
    v2 = config.parse('''version = 2
[plugins."io.containerd.grpc.v1.cri"]
  max_concurrent_downloads = 5
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"
[plugins."io.containerd.grpc.v1.cri".registry.configs."r.example".auth]
  username = "u"
  password = "p"
''', source="t")
    assert v2.images.registry.config_path == ("/etc/containerd/certs.d", "/etc/docker/certs.d")
    assert v2.images.max_concurrent_downloads == 5
    assert v2.images.registry.credentials("r.example").username == "u"
    v3 = config.parse('''version = 3
[plugins."io.containerd.cri.v1.images".registry.mirrors."docker.io"]
  endpoint = ["http://127.0.0.1:5000"]
''', source="t")
    assert [h.url for h in v3.images.registry.hosts("docker.io")][0] == "http://127.0.0.1:5000/v2"


@pytest.mark.parametrize("text, words", [
    ('[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/x"\n'
     '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\nendpoint = ["http://m"]\n',
     "`mirrors` cannot be set together with `config_path`"),
    ('[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\nendpoint = "http://m"\n',
     'registry.mirrors."docker.io".endpoint must be a list of strings'),
    ('[plugins."io.containerd.grpc.v1.cri"]\nmax_concurrent_downloads = 0\n', "must be >= 1"),
])
def test_bad_registry_settings(text: str, words: str) -> None:
    with pytest.raises(ConfigFileError) as exc:
        config.parse(text, source="bad.toml")
    assert words in str(exc.value)


# -- the streaming server's keys (containerd's) -------------------------------------------

def test_streaming_defaults_and_keys() -> None:
    from cri_shim import config as cfgmod
    d = cfgmod.load(None).streaming
    assert (d.address, d.port, d.idle_timeout, d.tls) == ("127.0.0.1", 0, 4 * 3600.0, False)
    c = cfgmod.parse('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'
                     'stream_server_address = "0.0.0.0"\nstream_server_port = "10010"\n'
                     'stream_idle_timeout = "1h30m0.5s"\nenable_tls_streaming = true\n'
                     '[plugins."io.containerd.grpc.v1.cri".x509_key_pair_streaming]\n'
                     'tls_cert_file = "/c.pem"\ntls_key_file = "/k.pem"\n', source="t.toml").streaming
    assert (c.address, c.port, c.idle_timeout, c.tls, c.cert_file) == ("0.0.0.0", 10010, 5400.5, True, "/c.pem")


@pytest.mark.parametrize("body,words", [
    ('stream_server_port = "http"', "stream_server_port must be a port number"),
    ('stream_idle_timeout = "4 hours"', 'stream_idle_timeout must be a duration such as "4h0m0s"'),
    ('enable_tls_streaming = "yes"', "enable_tls_streaming must be true or false"),
    ('[plugins."io.containerd.grpc.v1.cri".x509_key_pair_streaming]\ntls_cert_file = "/c"',
     "X509KeyPairStreaming.TLSCertFile is set but EnableTLSStreaming is not set"),
    ('enable_tls_streaming = true\n[plugins."io.containerd.grpc.v1.cri".x509_key_pair_streaming]\n'
     'tls_cert_file = "/c"', "must set X509KeyPairStreaming.TLSKeyFile"),
])
def test_streaming_bad_keys(body: str, words: str) -> None:
    from cri_shim import config as cfgmod
    from cri_shim.errors import ConfigFileError
    with pytest.raises(ConfigFileError) as exc:
        cfgmod.parse(f'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n{body}\n', source="t.toml")
    assert words in str(exc.value) and "t.toml" in str(exc.value)


@pytest.mark.parametrize("text,seconds", [("0", 0.0), ("4h0m0s", 14400.0), ("300ms", 0.3),
                                          ("1.5h", 5400.0), ("2m3s", 123.0)])
def test_go_durations(text: str, seconds: float) -> None:
    from cri_shim.streamconfig import parse_duration
    assert parse_duration(text) == pytest.approx(seconds)


# -- [metrics] (containerd's top-level table) ---------------------------------------------

def test_metrics_off_by_default_and_keys() -> None:
    from cri_shim import config as cfgmod
    assert cfgmod.load(None).metrics.address == ""
    m = cfgmod.parse('version = 2\n[metrics]\naddress = "127.0.0.1:1338"\ngrpc_histogram = false\n',
                     source="t.toml").metrics
    assert (m.address, m.grpc_histogram) == ("127.0.0.1:1338", False)


@pytest.mark.parametrize("body,words", [
    ('address = "1338"', "metrics.address must be host:port"),
    ('address = "127.0.0.1:99999"', "metrics.address must be host:port"),
    ("address = 1338", "metrics.address must be a string"),
    ('grpc_histogram = "yes"', "metrics.grpc_histogram must be true or false"),
])
def test_metrics_bad_keys(body: str, words: str) -> None:
    from cri_shim import config as cfgmod
    from cri_shim.errors import ConfigFileError
    with pytest.raises(ConfigFileError) as exc:
        cfgmod.parse(f"version = 2\n[metrics]\n{body}\n", source="t.toml")
    assert words in str(exc.value) and "t.toml" in str(exc.value)


def test_grpc_code_names_as_go_grpc_prometheus() -> None:
    import grpc

    from cri_shim.metrics import _code_name
    assert [_code_name(c) for c in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND,
                                    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)] == [
        "OK", "NotFound", "DeadlineExceeded", "Canceled"]
