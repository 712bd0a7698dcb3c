"""ADD: flannel's ``cmdAdd``/``doCmdAdd``: read subnet.env, build the delegate config
exactly as flannel does, save it, run the delegate, return its result.

Loaded only when an ADD runs (``ipaddress`` and ``cni.result`` come with it).
"""

from __future__ import annotations

import io
import ipaddress
import sys
from collections.abc import Mapping

from cni import gojson
from cni.errors import PluginNotFound
from cni.invoke import Exec
from cni.result import Result, result_from_output
from cni.skel import CmdArgs, config_field, go_json_type

from .delegate import default_exec, run_delegate, save_conf
from .netconf import NetConf, internal, load_netconf
from .subnetenv import SubnetEnv, SubnetEnvError, read_subnet_env

__all__ = ["build_delegate", "delegate_bytes", "cmd_add"]


def build_delegate(conf: NetConf, fenv: SubnetEnv) -> dict[str, object]:
    """The delegate config flannel's ``cmdAdd``/``doCmdAdd`` build. Raises
    ``ValueError`` with flannel's messages for a delegate it rejects."""
    delegate: dict[str, object] = dict(conf.delegate or {})
    if "type" in delegate and not isinstance(delegate["type"], str):
        raise ValueError("'delegate' dictionary, if present, must have (string) 'type' field")
    if "name" in delegate:
        raise ValueError("'delegate' dictionary must not have 'name' field, "
                         "it'll be set by flannel")
    if "ipam" in delegate:
        raise ValueError("'delegate' dictionary must not have 'ipam' field, "
                         "it'll be set by flannel")
    if conf.runtime_config is not None:
        delegate["runtimeConfig"] = conf.runtime_config
    delegate["name"] = conf.name
    delegate.setdefault("type", "bridge")
    if "ipMasq" not in delegate:
        delegate["ipMasq"] = not fenv.ipmasq  # if flannel is not doing ipmasq, we should
    if "mtu" not in delegate:
        delegate["mtu"] = fenv.mtu
    if delegate["type"] == "bridge":
        delegate.setdefault("isGateway", True)
    if conf.cni_version:
        delegate["cniVersion"] = conf.cni_version
    try:
        delegate["ipam"] = _delegate_ipam(conf, fenv)
    except ValueError as exc:
        raise ValueError(f"failed to assemble Delegate IPAM: {exc}") from None
    return delegate


def _delegate_ipam(conf: NetConf, fenv: SubnetEnv) -> dict[str, object]:
    # getDelegateIPAM: flannel's own "ipam" section, completed and overridden.
    ipam: dict[str, object] = dict(conf.ipam or {})
    ipam.setdefault("type", "host-local")
    ranges = [[{"subnet": str(net)}] for net in (fenv.subnet, fenv.ipv6_subnet)
              if net is not None]
    ipam["ranges"] = ranges or None  # a nil Go slice
    routes = []
    if "routes" in ipam:
        given = ipam["routes"]
        if given is not None and not isinstance(given, list):
            raise ValueError("failed to read IPAM routes: failed to parse ipam.routes: json: "
                             f"cannot unmarshal {go_json_type(given)} into Go value of "
                             "type []types.Route")
        try:
            routes = [_route(r) for r in given or []]
        except ValueError as exc:
            raise ValueError(f"failed to read IPAM routes: failed to parse ipam.routes: "
                             f"{exc}") from None
    routes += [gojson.Struct(dst=str(net)) for net in (*fenv.networks, *fenv.ipv6_networks)]
    ipam["routes"] = routes
    return ipam


def _route(value: object) -> gojson.Struct:
    """One ``types.Route`` read and written back by Go: known fields only, ``dst``
    keeping its host bits, zero values omitted (``table``/``scope`` are pointers)."""
    obj = {} if value is None else value
    if not isinstance(obj, dict):
        raise ValueError(f"json: cannot unmarshal {go_json_type(obj)} into Go value of "
                         "type types.route")
    present = any(key.casefold() == "dst" for key in obj)
    out = gojson.Struct(dst=_go_cidr(config_field(obj, "dst"), present))
    gw = config_field(obj, "gw")
    if gw:
        out["gw"] = _go_ip(gw)
    for key, pointer in (("mtu", False), ("advmss", False), ("priority", False),
                         ("table", True), ("scope", True)):
        number = config_field(obj, key)
        if number is None:
            continue
        if isinstance(number, bool) or not isinstance(number, int):  # Go: 1.0 is no int
            raise ValueError(f"json: cannot unmarshal {go_json_type(number)} into Go struct "
                             f"field route.{key} of type int")
        if pointer or number:
            out[key] = number
    return out


def _go_cidr(text: object, present: bool) -> str:
    if not present:
        return "<nil>"  # a zero net.IPNet prints so
    if text is not None and not isinstance(text, str):
        raise ValueError(f"json: cannot unmarshal {go_json_type(text)} into Go value of "
                         "type string")
    text = text or ""
    try:
        if "/" not in text:
            raise ValueError
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"invalid CIDR address: {text}") from None
    return f"{_go_ip(str(iface.ip))}/{iface.network.prefixlen}"


def _go_ip(text: object) -> str:
    try:
        ip = ipaddress.ip_address(text) if isinstance(text, str) else None
    except ValueError:
        ip = None
    if ip is None:
        raise ValueError(f"invalid IP address: {text}")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # Go prints a v4-in-v6 address as IPv4
    return str(ip)


def delegate_bytes(delegate: Mapping[str, object]) -> bytes:
    """The delegate config as flannel's ``json.Marshal`` writes it: compact, map keys
    sorted, route objects in ``types.Route`` field order (``gojson.Struct``)."""
    return gojson.marshal(delegate)


def cmd_add(args: CmdArgs, *, exec_: Exec | None, environ: Mapping[str, str],
            stderr: io.TextIOBase | None = None) -> Result:
    """ADD: build and save the delegate config, run the delegate, return its result.
    *exec_* runs the delegate (None: ``default_exec()``)."""
    try:
        conf = load_netconf(args.stdin_data)
    except ValueError as exc:
        raise internal(f"failed to load flannel netconf file: {exc}") from None
    try:
        fenv = read_subnet_env(conf.subnet_file)
    except SubnetEnvError as exc:
        raise internal(f"failed to load flannel 'subnet.env' file: {exc}. "
                        "Check the flannel pod log for this node.") from None
    try:
        delegate = build_delegate(conf, fenv)
    except ValueError as exc:
        raise internal(str(exc)) from None
    data = delegate_bytes(delegate)
    save_conf(conf.data_dir, args.container_id, data)
    err = stderr or sys.stderr
    err.write("delegateAdd: netconf sent to delegate plugin:\n" + data.decode("utf-8", "replace"))
    err.flush()
    version = delegate.get("cniVersion")
    try:
        output = run_delegate(exec_ or default_exec(), "ADD", delegate["type"], data, args,
                              environ, stderr)
    except PluginNotFound as exc:
        raise internal(f"failed to delegate add: {exc.msg}") from None
    return result_from_output(output, plugin=delegate["type"],
                              cni_version=version if isinstance(version, str) else "")


