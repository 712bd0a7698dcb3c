"""A CRI ContainerConfig (and its pod's config and image) made into an OCI spec, as
containerd's CRI plugin makes it: which ``oci.spec`` functions apply, in what order,
with what. The rootfs is mounted already (users and groups are looked up in it).

Order (containerd's): the default spec; args, env, cwd, terminal; mounts (the CRI's,
the pod's files, the image's volumes); namespaces; devices; capabilities, privileged;
resources and cgroups path; masked and read-only paths; then, with the rootfs at hand,
the user and groups, and last seccomp (it depends on the final capabilities).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from images.manifest import ImageConfig
from oci import seccomp as seccomp_mod
from oci import spec as oci
from oci.rootpath import resolve
from oci.user import Accounts

from .api import api_pb2 as pb
from .errors import InvalidArgument, NotFound
from .podenv import CONTAINER, NODE, POD, TARGET
from .podfiles import PodFiles

__all__ = ["SpecInputs", "build_spec", "resources_of", "cgroups_path", "PROPAGATION_OPTION"]

PROPAGATION_OPTION = {pb.PROPAGATION_PRIVATE: "rprivate", pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
                      pb.PROPAGATION_BIDIRECTIONAL: "rshared"}
_SWAP_FILE_V1 = "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"


@dataclass(frozen=True)
class SpecInputs:
    """Everything a container's spec is made of."""

    container_id: str
    config: pb.ContainerConfig
    sandbox_id: str
    sandbox_config: Mapping[str, Any]    # PodSandboxConfig, proto JSON names
    image: ImageConfig
    image_name: str                      # what the annotations call the image
    rootfs: str                          # the mounted rootfs (users are read from it)
    pod_files: PodFiles | None
    netns_path: str                      # "" for a host-network pod
    pid_init: int                        # the pod's PID 1 (PID mode POD), else 0
    target_pid: int                      # the target container's pid (PID mode TARGET)
    volumes_dir: str                     # where the image's volumes get their dirs
    systemd_cgroup: bool = False


def build_spec(i: SpecInputs) -> oci.Spec:
    """The spec. Raises ``InvalidArgument`` for a config that cannot run, naming the
    field, and ``NotFound`` for a missing target container."""
    c = i.config
    sc = c.linux.security_context
    pod_sc = (i.sandbox_config.get("linux") or {}).get("security_context") or {}
    spec = oci.default_spec("rootfs")
    proc = spec["process"]
    try:
        proc["args"] = oci.process_args(i.image.entrypoint, i.image.cmd, c.command, c.args)
    except oci.SpecError as exc:
        raise InvalidArgument(str(exc)) from None
    env = []
    if c.tty:
        env.append("TERM=xterm")
    env.append(f"HOSTNAME={i.sandbox_config.get('hostname') or socket.gethostname()}")
    oci.with_env(spec, [*env, *i.image.env, *(f"{kv.key}={kv.value}" for kv in c.envs)])
    proc["cwd"] = c.working_dir or i.image.working_dir or "/"
    proc["terminal"] = c.tty
    spec["root"]["readonly"] = sc.readonly_rootfs
    proc["noNewPrivileges"] = sc.no_new_privs

    oci.with_mounts(spec, _mounts(i))
    oci.with_namespaces(spec, _namespaces(i))
    privileged = sc.privileged
    if privileged and not pod_sc.get("privileged"):
        raise InvalidArgument("no privileged container allowed in sandbox")
    devices: list[oci.Device] = []
    for d in c.devices:
        try:
            devices.extend(oci.device_at(d.host_path, d.container_path, d.permissions))
        except oci.SpecError as exc:
            raise InvalidArgument(str(exc)) from None
    if sc.HasField("capabilities"):
        oci.with_capabilities(spec, list(sc.capabilities.add_capabilities),
                              list(sc.capabilities.drop_capabilities))
    if privileged:
        oci.with_privileged(spec)
        devices = oci.host_devices() + devices
    oci.with_devices(spec, devices)
    if c.linux.HasField("resources"):
        r = c.linux.resources
        oci.with_resources(spec, resources_of(r), swap_controller=swap_controller())
        proc["oomScoreAdj"] = r.oom_score_adj
    spec["linux"]["cgroupsPath"] = cgroups_path(
        (i.sandbox_config.get("linux") or {}).get("cgroup_parent", ""), i.container_id)
    if not privileged:
        spec["linux"]["maskedPaths"] = list(sc.masked_paths)
        spec["linux"]["readonlyPaths"] = list(sc.readonly_paths)
        if _cgroup2_only():
            oci.with_namespaces(spec, {"cgroup": ""})
    spec["annotations"] = _annotations(i)
    _user(spec, i)
    seccomp = None if privileged else _seccomp(sc)
    if seccomp == "default":
        spec["linux"]["seccomp"] = seccomp_mod.default_profile(proc["capabilities"]["bounding"])
    elif seccomp is not None:
        try:
            spec["linux"]["seccomp"] = seccomp_mod.load_localhost(seccomp)
        except seccomp_mod.SeccompError as exc:
            raise InvalidArgument(str(exc)) from None
    _apparmor(sc)
    return spec


# -- mounts ------------------------------------------------------------------------

def _mounts(i: SpecInputs) -> list[oci.Mount]:
    c = i.config
    out: list[oci.Mount] = []
    taken = set()
    for n, m in enumerate(c.mounts):
        where = f"ContainerConfig.mounts[{n}]"
        if not m.container_path.startswith("/"):
            raise InvalidArgument(f"{where}.container_path {m.container_path!r} must be absolute")
        if m.HasField("image") and m.image.image:
            raise InvalidArgument(f"{where}: image volumes are not supported")
        if m.uidMappings or m.gidMappings:
            raise InvalidArgument(f"{where}: idmap mounts are not supported, but they were "
                                  f'requested for: "{m.host_path}"')
        out.append(_bind(m, where))
        taken.add(os.path.normpath(m.container_path))
    ro = c.linux.security_context.readonly_rootfs
    system: list[tuple[str, str, bool]] = []
    if i.pod_files is not None:
        f = i.pod_files
        system += [("/etc/hostname", f.hostname, ro), ("/etc/hosts", f.hosts, ro),
                   ("/etc/resolv.conf", f.resolv_conf, ro)]
        host_ipc = _mode(c.linux.security_context.namespace_options.ipc) == NODE or not \
            os.path.ismount(f.shm)
        system.append(("/dev/shm", "/dev/shm" if host_ipc else f.shm, False))
    for dest, source, readonly in system:
        if dest in taken or not os.path.exists(source):
            continue
        out.append(oci.Mount(dest, source, "bind", ("rbind", "rprivate", "ro" if readonly else "rw")))
        taken.add(dest)
    for volume in i.image.volumes:
        dest = os.path.normpath("/" + volume)
        if dest in taken:
            continue
        out.append(oci.Mount(dest, _image_volume(i, dest), "bind", ("rbind", "rprivate", "rw")))
        taken.add(dest)
    return out


def _bind(m: pb.Mount, where: str) -> oci.Mount:
    source = m.host_path
    if not source.startswith("/"):
        raise InvalidArgument(f"{where}.host_path {source!r} must be absolute")
    if not os.path.exists(source):
        try:
            os.makedirs(source, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise InvalidArgument(f'{where}: failed to mkdir "{source}": {exc.strerror}') from None
    source = os.path.realpath(source)
    propagation = PROPAGATION_OPTION.get(m.propagation, "rprivate")
    if propagation != "rprivate":
        _check_propagation(source, propagation)
    if m.recursive_read_only:
        if not m.readonly:
            raise InvalidArgument(f'recursive read-only mount conflicts with RW mount (hostPath="{m.host_path}")')
        if propagation != "rprivate":
            raise InvalidArgument("recursive read-only mount needs private propagation, got "
                                  f'"{pb.MountPropagation.Name(m.propagation)}" (hostPath="{m.host_path}")')
        access = "rro"
    else:
        access = "ro" if m.readonly else "rw"
    return oci.Mount(m.container_path, source, "bind", ("rbind", propagation, access))


def _check_propagation(source: str, propagation: str) -> None:
    point, optional = _mount_of(source)
    shared = any(o.startswith("shared:") for o in optional)
    slave = any(o.startswith("master:") for o in optional)
    if propagation == "rshared" and not shared:
        raise InvalidArgument(f'path "{source}" is mounted on "{point}" but it is not a shared mount')
    if propagation == "rslave" and not (shared or slave):
        raise InvalidArgument(f'path "{source}" is mounted on "{point}" but it is not a shared '
                              "or slave mount")


def _mount_of(path: str) -> tuple[str, list[str]]:
    """The mount point holding *path* and its optional fields (``shared:N``...)."""
    best, fields = "/", []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left = line.split(" - ", 1)[0].split()
            point = left[4].replace("\\040", " ")
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, fields = point, left[6:]
    return best, fields


def _image_volume(i: SpecInputs, dest: str) -> str:
    """A directory for an image-declared volume, holding what the image has there
    (containerd's default for image volumes)."""
    host = os.path.join(i.volumes_dir, secrets.token_hex(8))
    os.makedirs(host, mode=0o755, exist_ok=True)
    inside = resolve(i.rootfs, dest)
    if os.path.isdir(inside):
        subprocess.run(["cp", "-a", "--", f"{inside}/.", host], check=False, capture_output=True)
    return host


# -- namespaces --------------------------------------------------------------------

def _mode(value: int) -> int:
    return int(value)


def _namespaces(i: SpecInputs) -> dict[str, str | None]:
    opts = i.config.linux.security_context.namespace_options
    files = i.pod_files
    ns: dict[str, str | None] = {}
    ns["network"] = i.netns_path or None
    if files is not None:
        ns["uts"] = files.uts if i.netns_path and os.path.exists(files.uts) else None
        ns["ipc"] = files.ipc if os.path.exists(files.ipc) and _mode(opts.ipc) != NODE else None
    pid = _mode(opts.pid)
    if pid == NODE:
        ns["pid"] = None
    elif pid == POD:
        ns["pid"] = f"/proc/{i.pid_init}/ns/pid" if i.pid_init else ""
    elif pid == TARGET:
        if not i.target_pid:
            raise NotFound(f'container "{opts.target_id}" does not exist or is not running')
        ns["pid"] = f"/proc/{i.target_pid}/ns/pid"
    else:
        assert pid == CONTAINER
        ns["pid"] = ""
    return ns


# -- resources ---------------------------------------------------------------------

def resources_of(r: pb.LinuxContainerResources) -> oci.Resources:
    if r.cpu_shares < 0 or r.cpu_quota < -1 or r.cpu_period < 0 or r.memory_limit_in_bytes < 0:
        raise InvalidArgument(f"LinuxContainerResources: negative values are not valid ({r})")
    return oci.Resources(cpu_period=r.cpu_period, cpu_quota=r.cpu_quota, cpu_shares=r.cpu_shares,
                         memory_limit=r.memory_limit_in_bytes,
                         memory_swap_limit=r.memory_swap_limit_in_bytes,
                         cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
                         unified=dict(r.unified))


def swap_controller() -> bool:
    return os.path.exists(_SWAP_FILE_V1) or _cgroup2_only()


def _cgroup2_only() -> bool:
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def cgroups_path(parent: str, container_id: str) -> str:
    """containerd's: a parent whose last part ends in ``.slice`` is systemd's
    ``slice:prefix:name``; any other parent a cgroupfs path; none ``/cri-shim/<id>``."""
    if not parent:
        return f"/cri-shim/{container_id}"
    base = os.path.basename(parent.rstrip("/"))
    if base.endswith(".slice"):
        return f"{base}:cri-shim:{container_id}"
    return os.path.join(parent, container_id)


# -- security ----------------------------------------------------------------------

def _user(spec: oci.Spec, i: SpecInputs) -> None:
    sc = i.config.linux.security_context
    accounts = Accounts.of_rootfs(i.rootfs)
    user = ""
    if sc.run_as_username:
        user = sc.run_as_username
    elif sc.HasField("run_as_user"):
        user = str(sc.run_as_user.value)
    if sc.HasField("run_as_group"):
        if not user:
            raise InvalidArgument(f'user group "{sc.run_as_group.value}" is specified without user')
        user += f":{sc.run_as_group.value}"
    user = user or i.image.user
    try:
        if user:
            oci.with_user(spec, accounts, user)
        else:
            spec["process"]["user"]["additionalGids"] = [0]
    except oci.SpecError as exc:
        raise InvalidArgument(f"cannot set the user: {exc}") from None
    gids: list[int] = []
    if sc.supplemental_groups_policy == pb.SupplementalGroupsPolicy.Merge:
        who = sc.run_as_username or (str(sc.run_as_user.value) if sc.HasField("run_as_user") else "") \
            or i.image.user.split(":", 1)[0] or "0"
        name = who
        if who.isdigit():
            entry = accounts.user_by_uid(int(who))
            name = entry.name if entry else ""
        if name:
            gids += [g.gid for g in accounts.groups if name in g.members and g.name != name]
    elif sc.supplemental_groups_policy != pb.SupplementalGroupsPolicy.Strict:
        raise InvalidArgument(f"SupplementalGroupsPolicy={sc.supplemental_groups_policy} is not "
                              "implemented")
    for g in sc.supplemental_groups:
        if g < 0 or g > 2**32 - 1:
            raise InvalidArgument(f"supplemental group {g} is not a gid")
    oci.with_additional_gids(spec, [*gids, *sc.supplemental_groups])


def _seccomp(sc: pb.LinuxContainerSecurityContext) -> str | None:
    """"default", a Localhost file path, or None (unconfined)."""
    if sc.HasField("seccomp"):
        p = sc.seccomp
        if p.localhost_ref and p.profile_type != pb.SecurityProfile.Localhost:
            raise InvalidArgument("seccomp config invalid LocalhostRef must only be set if "
                                  "ProfileType is Localhost")
        if p.profile_type == pb.SecurityProfile.RuntimeDefault:
            return "default"
        if p.profile_type == pb.SecurityProfile.Unconfined:
            return None
        return _localhost(p.localhost_ref)
    path = sc.seccomp_profile_path
    if not path or path == "unconfined":
        return None
    if path in ("runtime/default", "docker/default"):
        return "default"
    if path.startswith("localhost/"):
        return _localhost(path[len("localhost/"):])
    raise InvalidArgument(f'invalid profile "{path}"')


def _localhost(ref: str) -> str:
    path = ref[len("localhost/"):] if ref.startswith("localhost/") else ref
    if not path.startswith("/"):
        raise InvalidArgument(f'seccomp profile "{ref}" must be an absolute path')
    return path


def _apparmor(sc: pb.LinuxContainerSecurityContext) -> None:
    """This node has no AppArmor (Debian's kernel here has it off); a profile other
    than unconfined or the runtime's default cannot be honoured."""
    if _apparmor_enabled():
        return
    wanted_localhost = (sc.HasField("apparmor") and sc.apparmor.profile_type ==
                        pb.SecurityProfile.Localhost) or sc.apparmor_profile.startswith("localhost/")
    if wanted_localhost:
        raise InvalidArgument("apparmor is not supported")


def _apparmor_enabled() -> bool:
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().startswith("Y")
    except OSError:
        return False


def _annotations(i: SpecInputs) -> dict[str, str]:
    meta = i.sandbox_config.get("metadata") or {}
    return {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": i.config.metadata.name,
        "io.kubernetes.cri.image-name": i.config.image.user_specified_image or i.image_name,
        "io.kubernetes.cri.sandbox-id": i.sandbox_id,
        "io.kubernetes.cri.sandbox-name": str(meta.get("name", "")),
        "io.kubernetes.cri.sandbox-namespace": str(meta.get("namespace", "")),
        "io.kubernetes.cri.sandbox-uid": str(meta.get("uid", "")),
    }


def status_mounts(config: pb.ContainerConfig) -> Sequence[pb.Mount]:
    """What ContainerStatus shows under mounts: the CRI's mounts as they were asked."""
    return list(config.mounts)
