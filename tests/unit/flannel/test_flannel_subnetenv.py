"""subnet.env and 10-flannel.conflist, byte for byte against flannel's sources."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from ipaddress import IPv4Network, IPv6Network

import pytest

from flannel.subnetenv import (CONFLIST, CONFLIST_NAME, render_subnet_env, write_conflist,
                               write_subnet_env)
from flannelcni.subnetenv import SubnetEnv, SubnetEnvError, read_subnet_env

NET = IPv4Network("10.244.0.0/16")
SUB = IPv4Network("10.244.1.0/24")
NET6 = IPv6Network("fd00:10:244::/56")
SUB6 = IPv6Network("fd00:10:244:1::/64")


# -- writing (flannel pkg/subnet/subnetfile_unix.go WriteSubnetFile) -------------------

def test_ipv4_lines_in_flannels_order():
    assert render_subnet_env(network=NET, subnet=SUB, mtu=1450, ipmasq=True) == (
        b"FLANNEL_NETWORK=10.244.0.0/16\n"
        b"FLANNEL_SUBNET=10.244.1.1/24\n"
        b"FLANNEL_MTU=1450\n"
        b"FLANNEL_IPMASQ=true\n")


def test_dual_stack_puts_ipv6_pair_after_ipv4_pair():
    assert render_subnet_env(network=NET, subnet=SUB, mtu=1450, ipmasq=False,
                             ipv6_network=NET6, ipv6_subnet=SUB6) == (
        b"FLANNEL_NETWORK=10.244.0.0/16\n"
        b"FLANNEL_SUBNET=10.244.1.1/24\n"
        b"FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"
        b"FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
        b"FLANNEL_MTU=1450\n"
        b"FLANNEL_IPMASQ=false\n")


def test_ipv6_only_has_no_ipv4_lines():
    assert render_subnet_env(network=None, subnet=None, mtu=1430, ipmasq=True,
                             ipv6_network=NET6, ipv6_subnet=SUB6) == (
        b"FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"
        b"FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
        b"FLANNEL_MTU=1430\n"
        b"FLANNEL_IPMASQ=true\n")


def test_write_is_atomic_0644_and_makes_the_directory(tmp_path):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    old_umask = os.umask(0o077)
    try:
        write_subnet_env(str(path), network=NET, subnet=SUB, mtu=1450, ipmasq=True)
    finally:
        os.umask(old_umask)
    assert path.read_bytes().startswith(b"FLANNEL_NETWORK=10.244.0.0/16\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    inode = path.stat().st_ino
    write_subnet_env(str(path), network=NET, subnet=IPv4Network("10.244.7.0/24"), mtu=1450, ipmasq=True)
    assert b"FLANNEL_SUBNET=10.244.7.1/24\n" in path.read_bytes()
    assert path.stat().st_ino != inode                  # replaced, never rewritten in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["subnet.env"]   # no temp left


def test_write_keeps_an_existing_files_mode(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("old")
    path.chmod(0o600)
    write_subnet_env(str(path), network=NET, subnet=SUB, mtu=1450, ipmasq=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- reading (flannel-io/cni-plugin flannel.go loadFlannelSubnetEnv) ------------------

def _env(tmp_path, text: str) -> str:
    path = tmp_path / "subnet.env"
    path.write_bytes(text.encode())
    return str(path)


def test_round_trip(tmp_path):
    path = str(tmp_path / "subnet.env")
    write_subnet_env(path, network=NET, subnet=SUB, mtu=1450, ipmasq=True,
                     ipv6_network=NET6, ipv6_subnet=SUB6)
    assert read_subnet_env(path) == SubnetEnv(networks=(NET,), subnet=SUB, ipv6_networks=(NET6,),
                                              ipv6_subnet=SUB6, mtu=1450, ipmasq=True)
    assert read_subnet_env(path).network == NET


def test_subnet_is_the_network_go_parsecidr_returns(tmp_path):
    env = read_subnet_env(_env(tmp_path, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                                         "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"))
    assert env.subnet == IPv4Network("10.244.1.0/24")


def test_missing_everything_lists_every_key(tmp_path):
    path = _env(tmp_path, "# nothing here\nOTHER=1\n")
    with pytest.raises(SubnetEnvError) as exc:
        read_subnet_env(path)
    assert str(exc.value) == (f"{path} is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, "
                              "FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ")


@pytest.mark.parametrize("drop,missing", [
    ("FLANNEL_NETWORK", "FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK"),
    ("FLANNEL_SUBNET", "FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET"),
    ("FLANNEL_MTU", "FLANNEL_MTU"),
    ("FLANNEL_IPMASQ", "FLANNEL_IPMASQ"),
])
def test_one_missing_key(tmp_path, drop, missing):
    lines = {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.1.1/24",
             "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}
    del lines[drop]
    path = _env(tmp_path, "".join(f"{k}={v}\n" for k, v in lines.items()))
    with pytest.raises(SubnetEnvError, match="^" + path + " is missing " + missing + "$"):
        read_subnet_env(path)


def test_ipv6_only_file_is_complete(tmp_path):
    env = read_subnet_env(_env(tmp_path, "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"
                                         "FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
                                         "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"))
    assert env.networks == () and env.subnet is None and env.ipv6_subnet == SUB6
    assert env.ipmasq is False


def test_missing_file_says_what_go_says(tmp_path):
    path = str(tmp_path / "nope.env")
    with pytest.raises(SubnetEnvError) as exc:
        read_subnet_env(path)
    assert str(exc.value) == f"open {path}: no such file or directory"


@pytest.mark.parametrize("key,value,message", [
    ("FLANNEL_NETWORK", "10.244.0.0/33", "invalid CIDR address: 10.244.0.0/33"),
    ("FLANNEL_NETWORK", "10.244.0.0/255.255.0.0", "invalid CIDR address: 10.244.0.0/255.255.0.0"),
    ("FLANNEL_SUBNET", "10.244.1.1", "invalid CIDR address: 10.244.1.1"),
    ("FLANNEL_SUBNET", "", "invalid CIDR address: "),
    ("FLANNEL_MTU", "abc", 'strconv.ParseUint: parsing "abc": invalid syntax'),
    ("FLANNEL_MTU", "+1450", 'strconv.ParseUint: parsing "+1450": invalid syntax'),
    ("FLANNEL_MTU", " 1450", 'strconv.ParseUint: parsing " 1450": invalid syntax'),
    ("FLANNEL_MTU", "4294967296", 'strconv.ParseUint: parsing "4294967296": value out of range'),
])
def test_bad_values_fail_with_gos_text(tmp_path, key, value, message):
    lines = {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.1.1/24",
             "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true", key: value}
    path = _env(tmp_path, "".join(f"{k}={v}\n" for k, v in lines.items()))
    with pytest.raises(SubnetEnvError) as exc:
        read_subnet_env(path)
    assert str(exc.value) == message


def test_go_scanner_details(tmp_path):
    # CRLF endings, no final newline, several networks with a duplicate, IPMASQ only
    # "true" is true, the last FLANNEL_SUBNET wins.
    env = read_subnet_env(_env(tmp_path, "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16,10.244.0.0/16\r\n"
                                         "FLANNEL_SUBNET=10.244.1.1/24\r\nFLANNEL_SUBNET=10.244.2.1/24\r\n"
                                         "FLANNEL_MTU=1450\r\nFLANNEL_IPMASQ=True"))
    assert env.networks == (NET, IPv4Network("10.245.0.0/16"))
    assert env.subnet == IPv4Network("10.244.2.0/24")
    assert env.mtu == 1450 and env.ipmasq is False


def test_reader_imports_nothing_but_the_stdlib_and_cnis_lean_helpers():
    code = ("import sys, flannelcni.subnetenv; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('flannel', 'flannelcni', 'nodeipam', 'pyroute2', 'cni', 'libcni', 'cri_shim', "
            "'grpc', 'yaml')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    assert out.stdout.strip() == "['cni', 'cni.frozen', 'flannelcni', 'flannelcni.subnetenv']"


# -- the conflist (kube-flannel.yml ConfigMap kube-flannel-cfg, cni-conf.json) -------

KUBE_FLANNEL_CNI_CONF = {"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}


def test_conflist_is_the_configmap_block_dedented():
    assert json.loads(CONFLIST) == KUBE_FLANNEL_CNI_CONF
    # Two-space indent, ", " nowhere, ": " after keys, one trailing newline: the YAML
    # literal block with its four leading spaces removed.
    assert CONFLIST == (json.dumps(KUBE_FLANNEL_CNI_CONF, indent=2) + "\n").encode()
    assert CONFLIST.splitlines()[:4] == [b"{", b'  "name": "cbr0",', b'  "cniVersion": "0.3.1",',
                                         b'  "plugins": [']


def test_write_conflist(tmp_path):
    path = write_conflist(str(tmp_path / "net.d"))
    assert path == str(tmp_path / "net.d" / CONFLIST_NAME) and CONFLIST_NAME == "10-flannel.conflist"
    assert open(path, "rb").read() == CONFLIST
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    write_conflist(str(tmp_path / "net.d"))
    assert os.listdir(tmp_path / "net.d") == [CONFLIST_NAME]
