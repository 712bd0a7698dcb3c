"""Running the delegate and keeping its config: what ADD and DEL share.

flannel's ``invoke.DelegateAdd``/``DelegateDel`` and ``saveScratchNetConf``: the
delegate is found through ``CNI_PATH`` and run with this process's environment and
``CNI_COMMAND`` replaced, with no timeout (flannel passes ``context.TODO()``), in this
process's group, so the runtime's kill of our group reaches it; a successful
delegate's stderr is copied to ours (``RawExec{Stderr: os.Stderr}``).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping

from atomicfile import write_atomic
from cni.invoke import Exec, ExecOutput, RawExec
from cni.skel import CmdArgs

from .netconf import go_oserror, internal

__all__ = ["run_delegate", "save_conf", "default_exec"]


def default_exec() -> Exec:
    """The runner for a delegate: real processes, in the plugin's own process group."""
    return RawExec(process_group=False)


def run_delegate(exec_: Exec, command: str, delegate_type: str, data: bytes, args: CmdArgs,
                 environ: Mapping[str, str], stderr: io.TextIOBase | None) -> ExecOutput:
    """Run the delegate's *command* with *data* on stdin; its output, whatever its exit
    status (the caller reads a failure). Raises ``PluginNotFound``."""
    bin_dirs = args.path.split(os.pathsep) if args.path else []
    path = exec_.find_plugin(delegate_type, bin_dirs)
    env = dict(environ)
    env["CNI_COMMAND"] = command
    output = exec_.run(path, data, env, None)
    if output.returncode == 0 and output.stderr:
        err = stderr or sys.stderr
        err.write(output.stderr.decode("utf-8", "replace"))
        err.flush()
    return output


def save_conf(data_dir: str, container_id: str, data: bytes) -> None:
    """saveScratchNetConf: the directory 0700, the file 0600, written atomically and
    synced (flannel fsyncs it: the delegate's DEL needs it after a reboot)."""
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise internal(go_oserror("mkdir", exc.filename or data_dir, exc)) from exc
    path = os.path.join(data_dir, container_id)
    try:
        write_atomic(path, data, mode=0o600, durable=True)
    except OSError as exc:
        raise internal(go_oserror("open", path, exc)) from exc
