"""The installed flannel plugin starts lean (issue 5: at most 25 ms over its delegate).

Each command runs the launcher that ``flannelcni.install`` writes, under ``python -S -X
importtime``, with a shell-script delegate and a temp subnet.env, and the modules it
imported are checked against the ones that cost start-up time. Module sets, never
times: the times vary with the machine. Then what was swapped for lighter code behaves
as before: the value classes as the frozen dataclasses they were, ``RawExec`` (which
starts plugins with ``posix_spawn``, not ``subprocess``) as ``subprocess`` did.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import pickle
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from cni.errors import ERR_IO_FAILURE, CNIError, PluginNotFound
from cni.invoke import ExecOutput, RawExec
from cni.result import DNS, Interface, IPConfig, Result, Route, parse_result
from cni.skel import CmdArgs
from flannelcni.install import install
from flannelcni.netconf import NetConf
from flannelcni.subnetenv import SubnetEnv, read_subnet_env

RESULT = {"cniVersion": "0.3.1",
          "interfaces": [{"name": "cni0", "mac": "0a:58:0a:f4:01:01"},
                         {"name": "eth0", "mac": "0a:58:0a:f4:01:02", "sandbox": "/run/netns/p"}],
          "ips": [{"version": "4", "interface": 1, "address": "10.244.1.2/24",
                   "gateway": "10.244.1.1"}],
          "routes": [{"dst": "10.244.0.0/16", "gw": "10.244.1.1"}], "dns": {}}
# Never on the plugin's path: the runtime side (libcni, cri-shim, the agent) and its
# dependencies.
RUNTIME_SIDE = {"grpc", "google", "yaml", "pyroute2", "etcd3gw", "cri_shim", "nodeipam",
                "libcni", "flannel"}
# The standard library modules that cost a plugin most of its start-up.
HEAVY = {"dataclasses", "inspect", "typing", "logging", "tempfile", "traceback", "decimal",
         "subprocess", "threading", "selectors", "signal", "locale", "contextlib",
         "importlib.util", "ast", "tokenize", "shutil", "random"}
# ...and the ones only a command that runs the delegate or parses addresses needs.
EXEC_ONLY = {"flannelcni.add", "flannelcni.delete", "flannelcni.delegate", "ipaddress",
             "cni.result"}


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    """The installed launcher, a delegate ``bridge`` that records its commands and
    prints RESULT for ADD, and kube-flannel's usual subnet.env."""
    bin_dir = tmp_path / "bin"
    launcher = Path(install(str(bin_dir)))
    bridge = bin_dir / "bridge"
    bridge.write_text("#!/bin/sh\n"
                      f"cat > '{tmp_path}/stdin.'\"$CNI_COMMAND\"\n"
                      f"echo \"$CNI_COMMAND\" >> '{tmp_path}/calls'\n"
                      f"[ \"$CNI_COMMAND\" = ADD ] && echo '{json.dumps(RESULT)}'\n"
                      "exit 0\n")
    bridge.chmod(0o755)
    (tmp_path / "subnet.env").write_text("FLANNEL_NETWORK=10.244.0.0/16\n"
                                         "FLANNEL_SUBNET=10.244.1.1/24\n"
                                         "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    return {"tmp": tmp_path, "launcher": launcher, "bin": bin_dir}


def run_plugin(node: dict[str, Path], command: str, subnet_file: str | None = None
               ) -> tuple[subprocess.CompletedProcess[bytes], set[str]]:
    """One command through the launcher; returns the process and the modules it imported."""
    tmp = node["tmp"]
    conf = {"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel",
            "subnetFile": subnet_file or str(tmp / "subnet.env"), "dataDir": str(tmp / "data"),
            "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": "ctr1",
           "CNI_NETNS": str(tmp / "no-such-netns"), "CNI_IFNAME": "eth0",
           "CNI_PATH": str(node["bin"])}
    # The interpreter and flags of the launcher's own "#!... -S" line.
    shebang = node["launcher"].read_text().splitlines()[0][2:].split()
    proc = subprocess.run([*shebang, "-X", "importtime", str(node["launcher"])],
                          input=json.dumps(conf).encode(), env=env, capture_output=True,
                          timeout=60)
    # An -X importtime line may follow the plugin's own stderr on the same line (flannel
    # writes the delegate's config without a newline, as upstream does).
    lines = [line[line.index("import time:"):] for line in proc.stderr.decode().splitlines()
             if "import time:" in line]
    modules = {line.rsplit("|", 1)[1].strip() for line in lines if line.count("|") == 2}
    modules.discard("imported package")  # the header line
    return proc, modules


def unwanted(modules: set[str], names: set[str]) -> list[str]:
    """The modules in *modules* that are one of *names* or inside one of them."""
    return sorted(m for m in modules
                  if any(m == n or m.startswith(n + ".") for n in names))


def test_probe_sees_imports(node) -> None:
    # Guards the module sets below: an empty set would make every test pass.
    _, modules = run_plugin(node, "VERSION")
    assert {"json", "cni.skel", "flannelcni.plugin"} <= modules


def test_version_imports_no_exec_or_heavy_modules(node) -> None:
    proc, modules = run_plugin(node, "VERSION")
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout)["cniVersion"] == "1.1.0"  # skel: version.Current()
    assert unwanted(modules, RUNTIME_SIDE | HEAVY | EXEC_ONLY) == []
    assert not (node["tmp"] / "calls").exists()  # VERSION is flannel's own answer


def test_add_and_del_import_only_what_the_delegate_needs(node) -> None:
    proc, modules = run_plugin(node, "ADD")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == RESULT  # the delegate's result, unchanged
    assert unwanted(modules, RUNTIME_SIDE | HEAVY) == []
    assert {"flannelcni.add", "ipaddress", "cni.result"} <= modules  # the probe works
    saved = node["tmp"] / "data" / "ctr1"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert (node["tmp"] / "stdin.ADD").read_bytes() == saved.read_bytes()
    assert [p.name for p in saved.parent.iterdir()] == ["ctr1"]  # no temp file left

    proc, modules = run_plugin(node, "DEL")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == b""
    assert unwanted(modules, RUNTIME_SIDE | HEAVY | {"ipaddress", "cni.result",
                                                      "flannelcni.add"}) == []
    assert "flannelcni.delete" in modules
    assert (node["tmp"] / "calls").read_text().split() == ["ADD", "DEL"]
    assert not saved.exists()


def test_add_error_path_stays_lean(node) -> None:
    proc, modules = run_plugin(node, "ADD", subnet_file=str(node["tmp"] / "missing.env"))
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert err["code"] == 999 and err["msg"].startswith("failed to load flannel 'subnet.env' file: open ")
    # ADD's own module (with ipaddress and the result types) is loaded, nothing heavier.
    assert unwanted(modules, RUNTIME_SIDE | HEAVY) == []


# -- the light value classes behave as the frozen dataclasses they replaced ----------

def test_values_repr_eq_hash_as_dataclasses() -> None:
    iface = Interface("eth0", "0a:58:0a:00:00:02", "/run/netns/p")
    assert repr(iface) == ("Interface(name='eth0', mac='0a:58:0a:00:00:02', "
                           "sandbox='/run/netns/p', mtu=None, socket_path=None, pci_id=None)")
    assert repr(DNS()) == "DNS(nameservers=(), domain='', search=(), options=())"
    assert repr(ExecOutput(b"x")) == "ExecOutput(stdout=b'x', stderr=b'', returncode=0)"
    assert CmdArgs("c", "n", "eth0", "", "/bin", b"{}").ifname == "eth0"
    assert NetConf(name="cbr0").data_dir == "/var/lib/cni/flannel"
    a = parse_result(json.dumps(RESULT).encode())
    b = Result(a.cni_version, a.interfaces, a.ips, a.routes, a.dns)  # raw=None
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)  # raw: not compared/shown
    assert "raw" not in repr(a) and a.raw is not None
    assert a != (a.cni_version, a.interfaces, a.ips, a.routes, a.dns)
    assert Route(a.routes[0].dst) != IPConfig(a.ips[0].address)
    for value in (a, iface, ExecOutput(b"x")):
        assert copy.deepcopy(value) == value
        assert pickle.loads(pickle.dumps(value)) == value


def test_values_are_frozen(tmp_path: Path) -> None:
    env_file = tmp_path / "subnet.env"
    env_file.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    fenv = read_subnet_env(str(env_file))
    assert fenv == SubnetEnv(networks=fenv.networks, subnet=fenv.subnet, mtu=1450, ipmasq=True)
    assert repr(fenv).startswith("SubnetEnv(networks=(IPv4Network('10.244.0.0/16'),), ")
    with pytest.raises(TypeError):
        SubnetEnv(fenv.networks)  # type: ignore[misc]  # keyword-only, as before
    for value, field in ((fenv, "mtu"), (Interface("eth0"), "name"), (DNS(), "domain"),
                         (NetConf(), "name"), (ExecOutput(b""), "stdout")):
        with pytest.raises(AttributeError, match="cannot assign to field"):
            setattr(value, field, None)
        with pytest.raises(AttributeError, match="cannot delete field"):
            delattr(value, field)


def test_exec_seam_is_one_class_for_both_sides() -> None:
    import libcni
    from libcni.testing import FakeExec
    import cni.invoke
    assert libcni.Exec is cni.invoke.Exec
    assert issubclass(RawExec, libcni.Exec) and issubclass(FakeExec, libcni.Exec)
    with pytest.raises(TypeError):
        libcni.Exec()  # type: ignore[abstract]


# -- RawExec starts a plugin as subprocess did ------------------------------------------

# What a plugin can see of how it was started: its process group, signal dispositions and
# mask, open descriptors, stdin, environment; then an exit status and both outputs.
PROBE = """#!/bin/sh
set -- $(cat /proc/$$/stat)
[ "$5" = "$$" ] && echo "group leader" || echo "not a group leader"
while read -r key value; do  # builtins only: a forked reader could catch sh mid-wait
    case $key in SigIgn:|SigBlk:) echo "$key $value";; esac
done < /proc/$$/status
echo "fds: $(ls /proc/$$/fd | sort -n | tr '\\n' ' ')"
echo "stdin: $(wc -c | tr -d ' ') bytes"
env | sort
echo "to stderr" >&2
exit 3
"""


def both(tmp_path: Path, script: str, stdin: bytes = b"",
         env: dict[str, str] | None = None) -> tuple[ExecOutput, ExecOutput]:
    path = tmp_path / "plugin"
    path.write_text(script)
    path.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD"} if env is None else env
    return (RawExec().run(str(path), stdin, env, None),
            RawExec(process_group=False).run(str(path), stdin, env, None))


def test_rawexec_starts_the_plugin_as_subprocess_did(tmp_path: Path) -> None:
    leaked_r, leaked_w = os.pipe()  # inheritable descriptors: close_fds must close them
    os.set_inheritable(leaked_r, True)
    os.set_inheritable(leaked_w, True)
    try:
        raw, spawn = both(tmp_path, PROBE, b"x" * 1000,
                          {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD", "ODD": "a b\tc"})
    finally:
        os.close(leaked_r)
        os.close(leaked_w)
    # No signal ignored but glibc's internal 32 and 33, which its posix_spawn leaves
    # ignored (see RawExec), and which a parent (make, a CI shell) may have left
    # ignored too: compared without them.
    internal = sum(1 << (sig - 1) for sig in range(32, signal.SIGRTMIN))

    def without_internal(out: ExecOutput) -> ExecOutput:
        ignored = re.search(rb"SigIgn: ([0-9a-f]+)", out.stdout)
        assert ignored and int(ignored[1], 16) & ~internal == 0
        return ExecOutput(out.stdout.replace(ignored[0], b"SigIgn: " + b"0" * 16),
                          out.stderr, out.returncode)

    spawn, raw = without_internal(spawn), without_internal(raw)
    # The runtime's RawExec makes a process group; a meta plugin's delegate stays in
    # the plugin's, so the runtime's timeout kill of that group reaches it.
    assert spawn.stdout.splitlines()[0] == b"not a group leader"
    assert raw.stdout.splitlines()[0] == b"group leader"
    spawn = ExecOutput(b"\n".join(spawn.stdout.splitlines()[1:]), spawn.stderr, spawn.returncode)
    raw = ExecOutput(b"\n".join(raw.stdout.splitlines()[1:]), raw.stderr, raw.returncode)
    assert spawn == raw
    lines = raw.stdout.decode().splitlines()
    assert "stdin: 1000 bytes" in lines and "ODD=a b\tc" in lines
    fds = next(line for line in lines if line.startswith("fds: ")).split()[1:]
    assert str(leaked_r) not in fds and str(leaked_w) not in fds
    assert (raw.returncode, raw.stderr) == (3, b"to stderr\n")


def test_rawexec_big_stdin_and_outputs_do_not_deadlock(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    raw, spawn = both(tmp_path, "#!/bin/sh\ntee /dev/stderr\n", data)
    assert spawn == raw
    assert (spawn.stdout, spawn.stderr, spawn.returncode) == (data, data, 0)


def test_rawexec_plugin_that_ignores_stdin_or_dies(tmp_path: Path) -> None:
    raw, spawn = both(tmp_path, "#!/bin/sh\nexec </dev/null\necho done\n", b"y" * 300_000)
    assert spawn == raw and spawn.stdout == b"done\n"
    raw, spawn = both(tmp_path, "#!/bin/sh\necho partial\nkill -KILL $$\n")
    assert spawn == raw and (spawn.stdout, spawn.returncode) == (b"partial\n", -9)


def test_rawexec_failures(tmp_path: Path) -> None:
    not_exec = tmp_path / "plain"
    not_exec.write_text("#!/bin/sh\n")
    for path, kind in ((not_exec, CNIError), (tmp_path / "gone", PluginNotFound)):
        errors = []
        for runner in (RawExec(), RawExec(process_group=False)):
            with pytest.raises(kind) as info:
                runner.run(str(path), b"{}", {}, None)
            errors.append(info.value)
        assert repr(errors[0]) == repr(errors[1])
    assert errors[0].msg.startswith("failed to find plugin")
    with pytest.raises(CNIError) as info:
        RawExec().run(str(not_exec), b"", {}, None)
    assert info.value.code == ERR_IO_FAILURE and "Permission denied" in info.value.msg


def test_rawexec_retries_text_file_busy(tmp_path: Path) -> None:
    script = tmp_path / "busy"
    fd = os.open(script, os.O_WRONLY | os.O_CREAT, 0o755)
    os.write(fd, b"#!/bin/sh\necho '{}'\n")
    try:
        RawExec(busy_retries=0).run(str(script), b"", {}, None)
    except CNIError as exc:
        if not isinstance(exc.__cause__, OSError) or exc.__cause__.errno != errno.ETXTBSY:
            raise
    else:
        os.close(fd)
        pytest.skip("this filesystem does not report ETXTBSY")
    timer = threading.Timer(0.3, os.close, [fd])
    timer.start()
    try:
        out = RawExec(busy_retries=50, busy_retry_delay=0.05).run(str(script), b"", {}, None)
    finally:
        timer.join()
    assert out == ExecOutput(b"{}\n")
