"""The flannel CNI plugin: flannel-io/cni-plugin (``flannel.go``, ``flannel_linux.go``).

A meta-plugin. ADD reads the node agent's ``subnet.env``, builds a delegate config
for the plugin that does the real work (bridge by default) exactly as flannel does,
saves it to ``<dataDir>/<containerID>`` and runs the delegate with this process's
environment; the delegate's result is printed as flannel prints it (its own version,
through the result types, pretty-printed). DEL runs the delegate's DEL with the saved
config and removes it; a missing file means there is nothing to undo. CHECK does
nothing, as flannel's ``cmdCheck`` (a TODO upstream). Errors that flannel builds with
``fmt.Errorf`` keep their texts and come out as code 999 (skel's ``ErrInternal``);
a delegate's own error object is passed on unchanged (skel does not wrap a
``types.Error``).

Every message, the VERSION answer and the ``about`` line follow flannel-io/cni-plugin
v1.9.1 (built on libcni v1.3.0's skel), including what it writes to stderr: the
``delegateAdd: netconf sent to delegate plugin:`` line on ADD and a successful
delegate's own stderr.

Deliberate differences: the saved config is written atomically (temp file, fsync,
rename) rather than truncated in place; it is kept when the delegate's DEL fails,
so a retried DEL still reaches the delegate (flannel's deferred cleanup meant that,
but its current ``doCmdDel`` removes the file whatever the delegate answered); a
``subnet.env`` key without ``=`` is an error naming it (flannel panics); and ADD's
stderr leaves out flannel's Go-syntax dump of the delegate map (``%#v``, which prints
pointer addresses), keeping the JSON line after it.

Started once per pod ADD/DEL: imports only the standard library, ``cni``,
``flannel.subnetenv`` and (to run the delegate) ``flannel.spawn``, and of those only
what the command needs: no ``typing``, ``dataclasses``, ``logging``, ``tempfile`` or
``subprocess``; ``ipaddress`` and ``cni.result`` for ADD only. Issue 5 gives the plugin
25 ms over its delegate, interpreter start included; ``tests/unit/test_plugin_startup.py``
keeps the imports down, ``python -S -X importtime`` on the installed launcher shows them.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping, Sequence

from cni import gojson
from cni._frozen import Frozen
from cni.errors import ERR_INTERNAL, CNIError, PluginNotFound
from cni.invoke import decode_output
from cni.skel import CmdArgs, config_field, go_json_type, plugin_main
from cni.version import SUPPORTED_VERSIONS
from flannel.subnetenv import SubnetEnv, SubnetEnvError, read_subnet_env, write_atomic

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import IO, Any

    from cni.invoke import Exec
    from cni.result import Result

__all__ = ["DEFAULT_SUBNET_FILE", "DEFAULT_DATA_DIR", "ABOUT", "NetConf", "load_netconf",
           "build_delegate", "delegate_bytes", "cmd_add", "cmd_del", "run", "main"]


def _goarch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
# skel's BuildString("flannel") for the release whose behaviour this port follows; the
# commit field names us.
UPSTREAM_VERSION = "v1.9.1"
ABOUT = f"CNI Plugin flannel version {UPSTREAM_VERSION} (linux/{_goarch()}) commit cri-shim"

# flannel's NetConf, with the Go type named in json's "cannot unmarshal" message.
_FIELDS: dict[str, tuple[type, str]] = {
    "cniVersion": (str, "string"), "name": (str, "string"), "type": (str, "string"),
    "capabilities": (dict, "map[string]bool"), "ipam": (dict, "map[string]interface {}"),
    "dns": (dict, "types.DNS"), "prevResult": (dict, "map[string]interface {}"),
    "subnetFile": (str, "string"), "dataDir": (str, "string"),
    "delegate": (dict, "map[string]interface {}"),
    "runtimeConfig": (dict, "map[string]interface {}"),
}


class NetConf(Frozen):
    """flannel's own network config (the conflist entry with ``name``/``cniVersion``)."""

    _fields = ("name", "cni_version", "subnet_file", "data_dir", "delegate", "ipam",
               "runtime_config")
    name: str
    cni_version: str
    subnet_file: str
    data_dir: str
    delegate: Mapping[str, Any] | None
    ipam: Mapping[str, Any] | None
    runtime_config: Mapping[str, Any] | None

    def __init__(self, name: str = "", cni_version: str = "",
                 subnet_file: str = DEFAULT_SUBNET_FILE, data_dir: str = DEFAULT_DATA_DIR,
                 delegate: Mapping[str, Any] | None = None,
                 ipam: Mapping[str, Any] | None = None,
                 runtime_config: Mapping[str, Any] | None = None) -> None:
        self._set(name=name, cni_version=cni_version, subnet_file=subnet_file,
                  data_dir=data_dir, delegate=delegate, ipam=ipam,
                  runtime_config=runtime_config)


def _internal(msg: str) -> CNIError:
    return CNIError(ERR_INTERNAL, msg)


def _go_oserror(op: str, path: str, exc: OSError) -> str:
    # Go's *PathError: "open <path>: <strerror>", the C text lower-cased at the start.
    # Go opens a directory fine and fails reading it; Python fails at open.
    if exc.errno == errno.EISDIR and op == "open":
        op = "read"
    text = os.strerror(exc.errno) if exc.errno in errno.errorcode else str(exc)
    return f"{op} {path}: {text[:1].lower() + text[1:]}"


def load_netconf(data: bytes) -> NetConf:
    """Parse flannel's config (``loadFlannelNetConf``); absent or null keys keep the
    defaults. Raises ``ValueError("failed to load netconf: ...")``."""
    try:
        obj = gojson.loads(data)
    except ValueError as exc:
        raise ValueError(f"failed to load netconf: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"failed to load netconf: json: cannot unmarshal {go_json_type(obj)} "
                         "into Go value of type main.NetConf")
    values: dict[str, Any] = {}
    for key, (kind, go_type) in _FIELDS.items():
        value = config_field(obj, key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"failed to load netconf: json: cannot unmarshal "
                             f"{go_json_type(value)} into Go struct field NetConf.{key} "
                             f"of type {go_type}")
        values[key] = value
    _check_nested(values["capabilities"], values["dns"])
    return NetConf(name=values["name"] or "", cni_version=values["cniVersion"] or "",
                   subnet_file=_default(values["subnetFile"], DEFAULT_SUBNET_FILE),
                   data_dir=_default(values["dataDir"], DEFAULT_DATA_DIR),
                   delegate=values["delegate"], ipam=values["ipam"],
                   runtime_config=values["runtimeConfig"])


def _check_nested(capabilities: Mapping[str, Any] | None, dns: Mapping[str, Any] | None) -> None:
    """The element types Go's decoder checks inside ``capabilities`` (map[string]bool)
    and ``dns`` (types.DNS); its message names the innermost struct and the path."""
    def fail(value: Any, struct: str, field: str, go_type: str) -> ValueError:
        return ValueError(f"failed to load netconf: json: cannot unmarshal {go_json_type(value)} "
                          f"into Go struct field {struct}.{field} of type {go_type}")

    for value in (capabilities or {}).values():
        if not isinstance(value, bool) and value is not None:
            raise fail(value, "NetConf", "capabilities", "bool")
    for key in ("nameservers", "domain", "search", "options"):
        value = config_field(dns or {}, key)
        if key == "domain":
            if value is not None and not isinstance(value, str):
                raise fail(value, "DNS", f"dns.{key}", "string")
            continue
        if value is not None and not isinstance(value, list):
            raise fail(value, "DNS", f"dns.{key}", "[]string")
        for item in value or ():
            if item is not None and not isinstance(item, str):
                raise fail(item, "DNS", f"dns.{key}", "string")


def _default(value: str | None, default: str) -> str:
    return default if value is None else value  # "" is kept, as Go's Unmarshal does


def build_delegate(conf: NetConf, fenv: SubnetEnv) -> dict[str, Any]:
    """The delegate config flannel's ``cmdAdd``/``doCmdAdd`` build. Raises
    ``ValueError`` with flannel's messages for a delegate it rejects."""
    delegate: dict[str, Any] = dict(conf.delegate or {})
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


def _delegate_ipam(conf: NetConf, fenv: SubnetEnv) -> dict[str, Any]:
    # getDelegateIPAM: flannel's own "ipam" section, completed and overridden.
    ipam: dict[str, Any] = dict(conf.ipam or {})
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


def _route(value: Any) -> gojson.Struct:
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


def _go_cidr(text: Any, present: bool) -> str:
    if not present:
        return "<nil>"  # a zero net.IPNet prints so
    if text is not None and not isinstance(text, str):
        raise ValueError(f"json: cannot unmarshal {go_json_type(text)} into Go value of "
                         "type string")
    text = text or ""
    import ipaddress
    try:
        if "/" not in text:
            raise ValueError
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"invalid CIDR address: {text}") from None
    return f"{_go_ip(str(iface.ip))}/{iface.network.prefixlen}"


def _go_ip(text: Any) -> str:
    import ipaddress
    try:
        ip = ipaddress.ip_address(text) if isinstance(text, str) else None
    except ValueError:
        ip = None
    if ip is None:
        raise ValueError(f"invalid IP address: {text}")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # Go prints a v4-in-v6 address as IPv4
    return str(ip)


def delegate_bytes(delegate: Mapping[str, Any]) -> bytes:
    """The delegate config as flannel's ``json.Marshal`` writes it: compact, map keys
    sorted, route objects in ``types.Route`` field order (``gojson.Struct``)."""
    return gojson.marshal(delegate)


def _save(data_dir: str, container_id: str, data: bytes) -> None:
    # saveScratchNetConf: the directory 0700, the file 0600 and synced.
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise _internal(_go_oserror("mkdir", exc.filename or data_dir, exc)) from exc
    path = os.path.join(data_dir, container_id)
    try:
        write_atomic(path, data, mode=0o600)
    except OSError as exc:
        raise _internal(_go_oserror("open", path, exc)) from exc


def _run_delegate(exec_: Exec, command: str, delegate_type: str, data: bytes, args: CmdArgs,
                  environ: Mapping[str, str], cni_version: str,
                  stderr: IO[str] | None) -> Result | None:
    # invoke.DelegateAdd/DelegateDel: found via CNI_PATH, run with this process's
    # environment and CNI_COMMAND replaced; no timeout (context.TODO()). RawExec's
    # Stderr is os.Stderr: a successful delegate's stderr is copied to ours.
    bin_dirs = args.path.split(os.pathsep) if args.path else []
    path = exec_.find_plugin(delegate_type, bin_dirs)
    env = dict(environ)
    env["CNI_COMMAND"] = command
    output = exec_.run(path, data, env, None)
    if output.returncode == 0 and output.stderr:
        err = stderr or sys.stderr
        err.write(output.stderr.decode("utf-8", "replace"))
        err.flush()
    return decode_output(output, plugin=delegate_type, command=command, cni_version=cni_version)


def cmd_add(args: CmdArgs, *, exec_: Exec, environ: Mapping[str, str],
            stderr: IO[str] | None = None) -> Result:
    """ADD: build and save the delegate config, run the delegate, return its result."""
    try:
        conf = load_netconf(args.stdin_data)
    except ValueError as exc:
        raise _internal(f"failed to load flannel netconf file: {exc}") from None
    try:
        fenv = read_subnet_env(conf.subnet_file)
    except SubnetEnvError as exc:
        raise _internal(f"failed to load flannel 'subnet.env' file: {exc}. "
                        "Check the flannel pod log for this node.") from None
    try:
        delegate = build_delegate(conf, fenv)
    except ValueError as exc:
        raise _internal(str(exc)) from None
    data = delegate_bytes(delegate)
    _save(conf.data_dir, args.container_id, data)
    err = stderr or sys.stderr
    err.write("delegateAdd: netconf sent to delegate plugin:\n" + data.decode("utf-8", "replace"))
    err.flush()
    version = delegate.get("cniVersion")
    try:
        result = _run_delegate(exec_, "ADD", delegate["type"], data, args, environ,
                               version if isinstance(version, str) else "", stderr)
    except PluginNotFound as exc:
        raise _internal(f"failed to delegate add: {exc.msg}") from None
    assert result is not None  # decode_output returns a result for ADD or raises
    return result


def cmd_del(args: CmdArgs, *, exec_: Exec, environ: Mapping[str, str],
            stderr: IO[str] | None = None) -> None:
    """DEL: run the delegate's DEL with the saved config, then remove it. No saved
    config: success without calling the delegate (spec: DEL of what is gone)."""
    try:
        conf = load_netconf(args.stdin_data)
    except ValueError as exc:
        raise _internal(str(exc)) from None
    path = os.path.join(conf.data_dir, args.container_id)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _internal(_go_oserror("open", path, exc)) from exc
    try:
        saved = _saved_conf(data)
    except ValueError as exc:
        # flannel: the interface stays on the bridge until the node reboots.
        err = stderr or sys.stderr
        err.write(f"failed to parse netconf: {exc}")  # Go's fmt.Fprintf, no newline
        err.flush()
        return None
    version = saved.get("cniVersion")
    try:
        _run_delegate(exec_, "DEL", saved.get("type") or "", data, args, environ,
                      version if isinstance(version, str) else "", stderr)
    except PluginNotFound as exc:
        raise _internal(exc.msg) from None
    try:
        os.remove(path)
    except OSError:
        pass  # per spec, safe to continue during DEL
    return None


def _saved_conf(data: bytes) -> Mapping[str, Any]:
    """The saved delegate config, decoded as ``json.Unmarshal`` into a
    ``types.PluginConf`` checks it (the fields DEL reads)."""
    saved = gojson.loads(data)
    if saved is None:
        return {}
    if not isinstance(saved, dict):
        raise ValueError(f"json: cannot unmarshal {go_json_type(saved)} into Go value of type "
                         "types.PluginConf")
    for key in ("type", "cniVersion", "name"):
        value = config_field(saved, key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"json: cannot unmarshal {go_json_type(value)} into Go struct "
                             f"field PluginConf.{key} of type string")
    return saved


def run(*, exec_: Exec | None = None, environ: Mapping[str, str] | None = None,
        stdin: IO[bytes] | bytes | None = None, stdout: IO[bytes] | None = None,
        stderr: IO[str] | None = None, argv: Sequence[str] | None = None) -> int:
    """One plugin invocation with injectable exec, environment and streams (tests run
    it in-process with a fake ``Exec``); returns the exit code."""
    def runner() -> Exec:
        if exec_ is not None:
            return exec_
        from flannel.spawn import SpawnExec  # not needed for VERSION
        return SpawnExec()

    env = os.environ if environ is None else environ
    return plugin_main(
        lambda a: cmd_add(a, exec_=runner(), environ=env, stderr=stderr),
        lambda a: cmd_del(a, exec_=runner(), environ=env, stderr=stderr),
        lambda a: None,  # flannel's cmdCheck: "TODO: implement"
        supported_versions=SUPPORTED_VERSIONS, about=ABOUT, argv=argv, environ=env,
        stdin=stdin, stdout=stdout, stderr=stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: the ``flannel`` plugin executable."""
    return run(argv=argv)


if __name__ == "__main__":
    sys.exit(main())
