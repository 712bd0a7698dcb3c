"""Configuration: a containerd-style TOML file, read once at start-up.

cri-shim reads the parts of containerd's config it has a use for: top-level ``root``
and ``state``, ``[grpc] address``, the CNI table, the runtimes table
(``containerd.default_runtime_name``, ``containerd.runtimes.<name>`` with
``runtime_type`` and ``options.BinaryName`` / ``options.SystemdCgroup``) and the
registry table, either in the version 2 form ``[plugins."io.containerd.grpc.v1.cri"...]``
or the version 3 form ``[plugins."io.containerd.cri.v1.runtime"...]`` (containerd
docs/cri/config.md). Keys cri-shim adds of its own are marked below.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Mapping

from images.hosts import RegistryConfig
from streaming.server import StreamConfig

from .errors import ConfigFileError
from .streamconfig import stream_config

log = logging.getLogger(__name__)

V2_CRI = "io.containerd.grpc.v1.cri"
V3_RUNTIME = "io.containerd.cri.v1.runtime"
V3_IMAGES = "io.containerd.cri.v1.images"
IP_PREFS = ("ipv4", "ipv6", "cni")
CGROUP_DRIVERS = ("systemd", "cgroupfs")


@dataclass(frozen=True, kw_only=True)
class CNISettings:
    """The CNI table. Defaults are containerd's unless marked."""

    bin_dirs: tuple[str, ...] = ("/opt/cni/bin",)
    conf_dir: str = "/etc/cni/net.d"
    max_conf_num: int = 1
    conf_template: str = ""
    ip_pref: str = "ipv4"
    setup_serially: bool = False
    use_internal_loopback: bool = False
    # cri-shim's own keys:
    cache_dir: str = "/var/lib/cni"        # libcni's CacheDir (results/ lives below it)
    netns_dir: str = "/var/run/netns"      # where pod network namespaces are pinned
    plugin_timeout: float = 60.0           # seconds one plugin exec may take
    gc_on_start: bool = True               # CNI GC of unowned cached attachments at start


@dataclass(frozen=True, kw_only=True)
class ImageSettings:
    """containerd's image settings: the registry table and download concurrency."""

    registry: RegistryConfig = field(default_factory=RegistryConfig)
    max_concurrent_downloads: int = 3


RUNC_TYPE = "io.containerd.runc.v2"


@dataclass(frozen=True, kw_only=True)
class RuntimeHandler:
    """One ``containerd.runtimes.<name>`` table: an OCI runtime with runc's command
    line (runc, crun), run through conmon."""

    name: str
    runtime_type: str = RUNC_TYPE
    binary: str = "runc"               # options.BinaryName
    systemd_cgroup: bool = False       # options.SystemdCgroup


@dataclass(frozen=True, kw_only=True)
class ContainerSettings:
    """containerd's ``containerd`` table, and what cri-shim adds beside it."""

    default_runtime: str = "runc"      # default_runtime_name
    runtimes: Mapping[str, RuntimeHandler] = field(default_factory=lambda: {
        "runc": RuntimeHandler(name="runc", binary="runc"),
        "crun": RuntimeHandler(name="crun", binary="crun")})
    # cri-shim's own keys, in the CRI table:
    conmon: str = "conmon"             # conmon_path
    catatonit: str = "catatonit"       # catatonit_path: PID 1 of PID mode POD pods


@dataclass(frozen=True)
class MetricsSettings:
    """containerd's top-level ``[metrics]`` (served by ``cri_shim.metrics``)."""
    address: str = ""            # "" is off; "127.0.0.1:1338" in containerd's examples
    grpc_histogram: bool = True  # containerd's default is false; the histogram is wanted here


@dataclass(frozen=True, kw_only=True)
class Config:
    root: str = "/var/lib/cri-shim"
    state: str = "/run/cri-shim"
    address: str = "/run/cri-shim/cri-shim.sock"
    cgroup_driver: str = "cgroupfs"
    cni: CNISettings = field(default_factory=CNISettings)
    images: ImageSettings = field(default_factory=ImageSettings)
    containers: ContainerSettings = field(default_factory=ContainerSettings)
    streaming: StreamConfig = field(default_factory=StreamConfig)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    source: str = "<embedded default>"

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def replace_cni(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, cni=dataclasses.replace(self.cni, **changes))


def default_config_text() -> str:
    return resources.files("cri_shim").joinpath("default-config.toml").read_text()


def load(path: str | None) -> Config:
    """Read FILE, or the embedded default when *path* is None."""
    if path is None:
        return parse(default_config_text(), source="<embedded default>")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror}") from exc
    return parse(text, source=path)


def parse(text: str, *, source: str) -> Config:
    """Parse containerd-style TOML *text*; every error names *source* and the key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{source}: invalid TOML: {exc}") from exc
    reader = _Reader(source)
    _refuse_version1(doc, source)
    version = doc.get("version", 2)
    if version not in (2, 3):
        raise ConfigFileError(f"{source}: unsupported config version {version!r} (want 2 or 3)")
    grpc_table = reader.table(doc, "grpc")
    plugins = reader.table(doc, "plugins")
    cri_table, cri_name = _cri_table(reader, plugins, version)
    cni_table = reader.table(cri_table, "cni", where=f'plugins."{cri_name}"')
    cfg = Config(
        root=reader.string(doc, "root", Config.root),
        state=reader.string(doc, "state", Config.state),
        address=reader.string(grpc_table, "address", Config.address, where="grpc"),
        cgroup_driver=_cgroup_driver(reader, cri_table, cri_name),
        cni=_cni_settings(reader, cni_table, f'plugins."{cri_name}".cni'),
        containers=_container_settings(reader, cri_table, cri_name),
        images=_image_settings(reader, plugins, cri_table, cri_name),
        streaming=stream_config(source, reader.table(plugins, V2_CRI, where="plugins"),
                                f'plugins."{V2_CRI}"'),
        metrics=_metrics_settings(reader, reader.table(doc, "metrics")),
        source=source,
    )
    return cfg


def _metrics_settings(reader: "_Reader", t: Mapping[str, Any]) -> MetricsSettings:
    """containerd's top-level ``[metrics]``: ``address`` (host:port, "" for off) and
    ``grpc_histogram``."""
    address = reader.string(t, "address", "", where="metrics")
    if address:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigFileError(f"{reader.source}: metrics.address must be host:port "
                                  f"(127.0.0.1:1338), not {address!r}")
    return MetricsSettings(address=address,
                           grpc_histogram=reader.boolean(t, "grpc_histogram", True, where="metrics"))


def _image_settings(reader: "_Reader", plugins: Mapping[str, Any], cri_table: Mapping[str, Any],
                    cri_name: str) -> ImageSettings:
    # Version 2 keeps image settings in the CRI table, version 3 in its own plugin.
    name = V3_IMAGES if cri_name == V3_RUNTIME else V2_CRI
    table = reader.table(plugins, V3_IMAGES, where="plugins") if name == V3_IMAGES else cri_table
    where = f'plugins."{name}"'
    reg = reader.table(table, "registry", where=where)
    rwhere = f"{where}.registry"
    config_path = reader.string(reg, "config_path", "", where=rwhere)
    mirrors: dict[str, tuple[str, ...]] = {}
    for host, entry in reader.table(reg, "mirrors", where=rwhere).items():
        if not isinstance(entry, dict):
            raise ConfigFileError(f'{reader.source}: {rwhere}.mirrors."{host}" must be a table')
        mirrors[host] = reader.string_list(entry, "endpoint", [], where=f'{rwhere}.mirrors."{host}"')
    configs = {}
    for host, entry in reader.table(reg, "configs", where=rwhere).items():
        if not isinstance(entry, dict):
            raise ConfigFileError(f'{reader.source}: {rwhere}.configs."{host}" must be a table')
        configs[host] = entry
    if config_path and mirrors:
        raise ConfigFileError(f"{reader.source}: {rwhere}: `mirrors` cannot be set together with "
                              "`config_path` (move the mirrors into hosts.toml files)")
    downloads = reader.integer(table, "max_concurrent_downloads", 3, where=where)
    if downloads < 1:
        raise ConfigFileError(f"{reader.source}: {where}.max_concurrent_downloads must be >= 1")
    return ImageSettings(
        registry=RegistryConfig(config_path=tuple(p for p in config_path.split(":") if p),
                                mirrors=mirrors, configs=configs),
        max_concurrent_downloads=downloads)


def _refuse_version1(doc: Mapping[str, Any], source: str) -> None:
    """containerd reads a file without ``version`` as version 1, whose CRI settings
    live in ``[plugins.cri]``; we read only versions 2 and 3, so such a file (or an
    explicit ``version = 1``) is refused with the tables to move, never half-read."""
    plugins = doc.get("plugins")
    legacy = plugins.get("cri") if isinstance(plugins, dict) else None
    if doc.get("version") != 1 and ("version" in doc or legacy is None):
        return
    moves = []
    if isinstance(legacy, dict):
        subtables = sorted(k for k, v in legacy.items() if isinstance(v, dict))
        moves = [f'[plugins.cri.{k}] to [plugins."{V2_CRI}".{k}]' for k in subtables]
        if any(not isinstance(v, dict) for v in legacy.values()):
            moves.insert(0, f'the keys of [plugins.cri] to [plugins."{V2_CRI}"]')
    how = ("move " + ", ".join(moves) + " and add `version = 2`") if moves else \
        f'move [plugins.cri] to [plugins."{V2_CRI}"] and add `version = 2`'
    raise ConfigFileError(f"{source}: a containerd version 1 config (no `version` key, CRI "
                          f"settings in [plugins.cri]) is not read: {how}")


def _cri_table(reader: "_Reader", plugins: Mapping[str, Any], version: int) -> tuple[dict, str]:
    has_v2, has_v3 = V2_CRI in plugins, V3_RUNTIME in plugins
    if has_v2 and has_v3:
        raise ConfigFileError(
            f'{reader.source}: both plugins."{V2_CRI}" and plugins."{V3_RUNTIME}" are set; '
            "use one (version 2 or version 3 layout)")
    name = V3_RUNTIME if (has_v3 or (version == 3 and not has_v2)) else V2_CRI
    return reader.table(plugins, name, where="plugins"), name


def _cgroup_driver(reader: "_Reader", cri_table: Mapping[str, Any], cri_name: str) -> str:
    """What RuntimeConfig reports, as containerd 2.0 decides it: the default runtime's
    (then the others', by name) ``options.SystemdCgroup``; when none says, systemd if
    systemd runs this machine, else cgroupfs. cri-shim also takes a plain
    ``cgroup_driver`` key in the CRI table."""
    where = f'plugins."{cri_name}"'
    driver = reader.string(cri_table, "cgroup_driver", "", where=where)
    if driver:
        if driver not in CGROUP_DRIVERS:
            raise ConfigFileError(
                f"{reader.source}: {where}.cgroup_driver = {driver!r}: "
                f"want one of {', '.join(CGROUP_DRIVERS)}")
        return driver
    containerd = cri_table.get("containerd") if isinstance(cri_table.get("containerd"), dict) else {}
    runtimes = containerd.get("runtimes") if isinstance(containerd.get("runtimes"), dict) else {}
    default = containerd.get("default_runtime_name", "runc")
    for name in [default, *sorted(n for n in runtimes if n != default)]:
        options = (runtimes.get(name) or {}).get("options") if isinstance(runtimes.get(name), dict) else None
        systemd = options.get("SystemdCgroup") if isinstance(options, dict) else None
        if systemd is None:
            continue
        if not isinstance(systemd, bool):
            raise ConfigFileError(f"{reader.source}: SystemdCgroup must be true or false")
        return "systemd" if systemd else "cgroupfs"
    return "systemd" if os.path.isdir("/run/systemd/system") else "cgroupfs"


def _container_settings(reader: "_Reader", cri_table: Mapping[str, Any],
                        cri_name: str) -> ContainerSettings:
    where = f'plugins."{cri_name}".containerd'
    table = reader.table(cri_table, "containerd", where=f'plugins."{cri_name}"')
    d = ContainerSettings()
    default = reader.string(table, "default_runtime_name", d.default_runtime, where=where)
    configured = reader.table(table, "runtimes", where=where)
    runtimes: dict[str, RuntimeHandler] = dict(d.runtimes) if not configured else {}
    for name, entry in configured.items():
        rwhere = f"{where}.runtimes.{name}"
        if not isinstance(entry, dict):
            raise ConfigFileError(f"{reader.source}: {rwhere} must be a table")
        rtype = reader.string(entry, "runtime_type", RUNC_TYPE, where=rwhere)
        if rtype != RUNC_TYPE:
            raise ConfigFileError(f"{reader.source}: {rwhere}.runtime_type = {rtype!r}: cri-shim "
                                  f"runs runc-compatible runtimes only ({RUNC_TYPE})")
        options = reader.table(entry, "options", where=rwhere)
        binary = reader.string(options, "BinaryName", "", where=f"{rwhere}.options") or \
            ("crun" if name == "crun" else "runc")
        runtimes[name] = RuntimeHandler(
            name=name, runtime_type=rtype, binary=binary,
            systemd_cgroup=reader.boolean(options, "SystemdCgroup", False, where=f"{rwhere}.options"))
    if default not in runtimes:
        raise ConfigFileError(f"{reader.source}: {where}.default_runtime_name = {default!r}: no "
                              f"such runtime (configured: {', '.join(sorted(runtimes)) or 'none'})")
    cwhere = f'plugins."{cri_name}"'
    return ContainerSettings(
        default_runtime=default, runtimes=runtimes,
        conmon=reader.string(cri_table, "conmon_path", d.conmon, where=cwhere),
        catatonit=reader.string(cri_table, "catatonit_path", d.catatonit, where=cwhere))


def _cni_settings(reader: "_Reader", t: Mapping[str, Any], where: str) -> CNISettings:
    d = CNISettings()
    known = {f.name for f in dataclasses.fields(CNISettings)} | {"bin_dir"}
    for key in t:
        if key not in known:
            log.warning("%s: ignoring unknown key %s.%s", reader.source, where, key)
    if "bin_dir" in t and "bin_dirs" in t:
        raise ConfigFileError(
            f"{reader.source}: {where}: `bin_dir` and `bin_dirs` are both set; "
            "set only one (bin_dirs is the containerd 2.x form)")
    if "bin_dir" in t:
        bin_dirs: tuple[str, ...] = (reader.string(t, "bin_dir", "", where=where),)
    else:
        bin_dirs = reader.string_list(t, "bin_dirs", list(d.bin_dirs), where=where)
    if not bin_dirs or not all(bin_dirs):
        raise ConfigFileError(f"{reader.source}: {where}.bin_dirs must name at least one directory")
    max_conf_num = reader.integer(t, "max_conf_num", d.max_conf_num, where=where)
    if max_conf_num < 0:
        raise ConfigFileError(f"{reader.source}: {where}.max_conf_num must be >= 0 (0 = all)")
    ip_pref = reader.string(t, "ip_pref", "", where=where) or "ipv4"
    if ip_pref not in IP_PREFS:
        raise ConfigFileError(
            f"{reader.source}: {where}.ip_pref = {ip_pref!r}: want one of {', '.join(IP_PREFS)}")
    timeout = t.get("plugin_timeout", d.plugin_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigFileError(f"{reader.source}: {where}.plugin_timeout must be a positive number of seconds")
    return CNISettings(
        bin_dirs=bin_dirs,
        conf_dir=reader.string(t, "conf_dir", d.conf_dir, where=where),
        max_conf_num=max_conf_num,
        conf_template=reader.string(t, "conf_template", d.conf_template, where=where),
        ip_pref=ip_pref,
        setup_serially=reader.boolean(t, "setup_serially", d.setup_serially, where=where),
        use_internal_loopback=reader.boolean(t, "use_internal_loopback", d.use_internal_loopback, where=where),
        cache_dir=reader.string(t, "cache_dir", d.cache_dir, where=where),
        netns_dir=reader.string(t, "netns_dir", d.netns_dir, where=where),
        plugin_timeout=float(timeout),
        gc_on_start=reader.boolean(t, "gc_on_start", d.gc_on_start, where=where),
    )


class _Reader:
    """Typed access to TOML tables; every error names the file and the dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def _fail(self, where: str, key: str, want: str, got: Any) -> ConfigFileError:
        dotted = f"{where}.{key}" if where else key
        return ConfigFileError(f"{self.source}: {dotted} must be {want}, not {type(got).__name__} {got!r}")

    def table(self, t: Mapping[str, Any], key: str, *, where: str = "") -> dict:
        v = t.get(key, {})
        if not isinstance(v, dict):
            raise self._fail(where, key, "a table", v)
        return v

    def string(self, t: Mapping[str, Any], key: str, default: str, *, where: str = "") -> str:
        v = t.get(key, default)
        if not isinstance(v, str):
            raise self._fail(where, key, "a string", v)
        return v

    def string_list(self, t: Mapping[str, Any], key: str, default: list[str], *, where: str = "") -> tuple[str, ...]:
        v = t.get(key, default)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._fail(where, key, "a list of strings", v)
        return tuple(v)

    def integer(self, t: Mapping[str, Any], key: str, default: int, *, where: str = "") -> int:
        v = t.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._fail(where, key, "an integer", v)
        return v

    def boolean(self, t: Mapping[str, Any], key: str, default: bool, *, where: str = "") -> bool:
        v = t.get(key, default)
        if not isinstance(v, bool):
            raise self._fail(where, key, "true or false", v)
        return v
