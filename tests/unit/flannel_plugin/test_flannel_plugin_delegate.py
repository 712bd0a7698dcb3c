"""The delegate config flannel builds, byte for byte, and what it rejects.

Expected values are derived from flannel-io/cni-plugin ``flannel_linux.go``
(``doCmdAdd``/``getDelegateIPAM``) and its ``flannel_linux_test.go`` vectors.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from flannel_harness import Flannel

from flannelcni import add, netconf
from flannelcni.subnetenv import read_subnet_env

# What flannel's json.Marshal(n.Delegate) gives for kube-flannel's conflist and the
# subnet.env FLANNEL_NETWORK=10.244.0.0/16 FLANNEL_SUBNET=10.244.1.1/24 FLANNEL_MTU=1450
# FLANNEL_IPMASQ=true: a Go map, so compact with sorted keys.
KUBE_FLANNEL_DELEGATE = (
    b'{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,'
    b'"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],'
    b'"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,'
    b'"name":"cbr0","type":"bridge"}')

TAIL = "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
V4 = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n" + TAIL
V6 = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n" + TAIL
DUAL = ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\n"
        "FLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n")
V4_TWO = ("FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
          "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n")
INPUT_ROUTES = [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}]


def delegate_for(tmp_path: Path, subnet_env: str, conf: dict) -> dict:
    path = tmp_path / "subnet.env"
    path.write_text(subnet_env)
    conf_ = netconf.load_netconf(json.dumps(conf).encode())
    return json.loads(add.delegate_bytes(add.build_delegate(conf_, read_subnet_env(str(path)))))


def test_kube_flannel_conflist_delegate_byte_for_byte(flannel: Flannel) -> None:
    out = flannel.run("ADD", flannel.conf())
    assert out.rc == 0, out.stdout
    (call,) = flannel.exec.calls
    assert call.stdin_bytes == KUBE_FLANNEL_DELEGATE
    assert flannel.saved().read_bytes() == KUBE_FLANNEL_DELEGATE


def test_saved_file_and_dir_modes(flannel: Flannel) -> None:
    assert flannel.run("ADD", flannel.conf()).rc == 0
    assert stat.S_IMODE(flannel.saved().stat().st_mode) == 0o600
    assert stat.S_IMODE(flannel.data_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in flannel.data_dir.iterdir()) == ["ctr1"]  # no temp files


# flannel_linux_test.go "CNI lifecycle": the saved config per subnet.env
@pytest.mark.parametrize("subnet_env,routes,ranges", [
    (V4, ["10.1.0.0/16"], ["10.1.17.0/24"]),
    (V4_TWO, ["10.1.0.0/16", "192.168.0.0/16"], ["10.1.17.0/24"]),
    (V6, ["fc00::/48"], ["fc00::/64"]),
    (DUAL, ["10.1.0.0/16", "fc00::/48"], ["10.1.17.0/24", "fc00::/64"]),
], ids=["ipv4", "ipv4-two-networks", "ipv6", "dual-stack"])
def test_upstream_vectors(tmp_path: Path, subnet_env: str, routes: list, ranges: list) -> None:
    conf = {"name": "cni-flannel", "type": "flannel"}
    assert delegate_for(tmp_path, subnet_env, conf) == {
        "ipMasq": False, "isGateway": True, "mtu": 1472, "name": "cni-flannel", "type": "bridge",
        "ipam": {"routes": [{"dst": r} for r in routes],
                 "ranges": [[{"subnet": r}] for r in ranges], "type": "host-local"}}


# flannel_linux_test.go "getDelegateIPAM": flannel's own ipam section is completed
@pytest.mark.parametrize("ipam_type", ["my-ipam", None])
@pytest.mark.parametrize("subnet_env,routes,ranges", [
    (V4, ["10.1.0.0/16"], ["10.1.17.0/24"]),
    (V6, ["fc00::/48"], ["fc00::/64"]),
    (DUAL, ["10.1.0.0/16", "fc00::/48"], ["10.1.17.0/24", "fc00::/64"]),
], ids=["ipv4", "ipv6", "dual-stack"])
def test_input_ipam_is_completed(tmp_path: Path, subnet_env: str, routes: list, ranges: list,
                                 ipam_type: str | None) -> None:
    ipam = {"unknown-param": "unknown-value", "routes": INPUT_ROUTES}
    if ipam_type:
        ipam["type"] = ipam_type
    got = delegate_for(tmp_path, subnet_env, {"name": "cni-flannel", "ipam": ipam})
    assert got["ipam"] == {"type": ipam_type or "host-local", "unknown-param": "unknown-value",
                           "routes": INPUT_ROUTES + [{"dst": r} for r in routes],
                           "ranges": [[{"subnet": r}] for r in ranges]}


def test_input_routes_go_through_types_route(tmp_path: Path) -> None:
    ipam = {"routes": [{"dst": "10.96.0.1/12", "gw": "", "mtu": 0, "table": 0, "priority": 5,
                        "junk": 1}], "dataDir": "/tmp/x"}
    data = add.delegate_bytes(add.build_delegate(
        netconf.load_netconf(json.dumps({"name": "n", "ipam": ipam}).encode()),
        _env(tmp_path, V4)))
    # host bits kept, zero ints and empty gw dropped, table (a pointer) kept, struct order
    assert (b'"ipam":{"dataDir":"/tmp/x","ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":'
            b'[{"dst":"10.96.0.1/12","priority":5,"table":0},{"dst":"10.1.0.0/16"}],'
            b'"type":"host-local"}') in data


def _env(tmp_path: Path, text: str):
    path = tmp_path / "subnet.env"
    path.write_text(text)
    return read_subnet_env(str(path))


def test_delegate_settings_win_over_defaults(tmp_path: Path) -> None:
    got = delegate_for(tmp_path, V4, {"name": "n", "cniVersion": "1.0.0", "runtimeConfig": {"x": 1},
                                      "delegate": {"type": "ipvlan", "ipMasq": True, "mtu": 1400,
                                                   "cniVersion": "0.4.0"}})
    assert got["type"] == "ipvlan" and "isGateway" not in got
    assert (got["ipMasq"], got["mtu"], got["cniVersion"]) == (True, 1400, "1.0.0")
    assert got["runtimeConfig"] == {"x": 1}


def test_ipmasq_false_means_the_bridge_masquerades(tmp_path: Path) -> None:
    got = delegate_for(tmp_path, V4.replace("IPMASQ=true", "IPMASQ=false"), {"name": "n"})
    assert got["ipMasq"] is True and "cniVersion" not in got


@pytest.mark.parametrize("delegate,msg", [
    ({"name": "x"}, "'delegate' dictionary must not have 'name' field, it'll be set by flannel"),
    ({"ipam": {}}, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"),
    ({"type": 5}, "'delegate' dictionary, if present, must have (string) 'type' field"),
    ({"type": None}, "'delegate' dictionary, if present, must have (string) 'type' field"),
])
def test_rejected_delegates(flannel: Flannel, delegate: dict, msg: str) -> None:
    out = flannel.run("ADD", flannel.conf(delegate=delegate))
    assert out.rc == 1 and out.json == {"code": 999, "msg": msg}
    assert flannel.exec.calls == [] and not flannel.saved().exists()


@pytest.mark.parametrize("text,missing", [
    ("foo=bar\n", "FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, "
                  "FLANNEL_MTU, FLANNEL_IPMASQ"),
    ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPMASQ=true\n",
     "FLANNEL_MTU"),
    ("FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
     "FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET"),
])
def test_missing_subnet_env_keys(flannel: Flannel, text: str, missing: str) -> None:
    flannel.subnet_file.write_text(text)
    out = flannel.run("ADD", flannel.conf())
    assert out.rc == 1 and out.json["code"] == 999
    assert out.json["msg"] == (f"failed to load flannel 'subnet.env' file: {flannel.subnet_file} "
                               f"is missing {missing}. Check the flannel pod log for this node.")
    assert flannel.exec.calls == []


def test_no_subnet_env(flannel: Flannel) -> None:
    flannel.subnet_file.unlink()
    out = flannel.run("ADD", flannel.conf())
    # flannel-io/cni-plugin v1.9.1 cmdAdd, byte for byte.
    assert out.stdout == (b'{\n    "code": 999,\n    "msg": "failed to load flannel \'subnet.env\' '
                          b"file: open " + str(flannel.subnet_file).encode() +
                          b': no such file or directory. Check the flannel pod log for this node."\n}')


def test_subnet_env_is_a_directory(flannel: Flannel) -> None:
    flannel.subnet_file.unlink()
    flannel.subnet_file.mkdir()
    out = flannel.run("ADD", flannel.conf())
    assert out.json["msg"] == (f"failed to load flannel 'subnet.env' file: read {flannel.subnet_file}: "
                               "is a directory. Check the flannel pod log for this node.")


def test_defaults_for_subnet_file_and_data_dir() -> None:
    conf = netconf.load_netconf(b'{"name":"cni-flannel","type":"flannel"}')
    assert (conf.subnet_file, conf.data_dir) == ("/run/flannel/subnet.env", "/var/lib/cni/flannel")
    conf = netconf.load_netconf(b'{"name":"n","subnetFile":null,"dataDir":"/d"}')
    assert (conf.subnet_file, conf.data_dir) == ("/run/flannel/subnet.env", "/d")


@pytest.mark.parametrize("key,value,go_type", [
    ("delegate", "bridge", "map[string]interface {}"),
    ("ipam", [], "map[string]interface {}"),
    ("subnetFile", 5, "string"),
    ("runtimeConfig", True, "map[string]interface {}"),
])
def test_bad_netconf(flannel: Flannel, key: str, value: object, go_type: str) -> None:
    out = flannel.run("ADD", flannel.conf(**{key: value}))
    kind = {str: "string", list: "array", int: "number", bool: "bool"}[type(value)]
    assert out.json["msg"] == (f"failed to load flannel netconf file: failed to load netconf: json: "
                               f"cannot unmarshal {kind} into Go struct field NetConf.{key} of type "
                               f"{go_type}")


@pytest.mark.parametrize("extra,struct_field,kind,go_type", [
    ({"capabilities": {"portMappings": "yes"}}, "NetConf.capabilities", "string", "bool"),
    ({"dns": {"nameservers": "10.0.0.10"}}, "DNS.dns.nameservers", "string", "[]string"),
    ({"dns": {"search": [1]}}, "DNS.dns.search", "number", "string"),
    ({"dns": {"domain": ["a"]}}, "DNS.dns.domain", "array", "string"),
])
def test_bad_nested_netconf(flannel: Flannel, extra: dict, struct_field: str, kind: str,
                            go_type: str) -> None:
    out = flannel.run("ADD", flannel.conf(**extra))
    assert out.json == {"code": 999, "msg": (
        f"failed to load flannel netconf file: failed to load netconf: json: cannot unmarshal "
        f"{kind} into Go struct field {struct_field} of type {go_type}")}
    assert flannel.exec.calls == []


def test_bad_ipam_route(flannel: Flannel) -> None:
    out = flannel.run("ADD", flannel.conf(ipam={"routes": [{"dst": "nonsense"}]}))
    assert out.json["msg"] == ("failed to assemble Delegate IPAM: failed to read IPAM routes: "
                               "failed to parse ipam.routes: invalid CIDR address: nonsense")
