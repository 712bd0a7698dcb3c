"""DEL: flannel's ``cmdDel``/``doCmdDel``: run the delegate's DEL with the config ADD
saved, then remove it.

Loaded only when a DEL runs; it needs neither subnet.env nor the result types.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping

from cni import gojson
from cni.errors import PluginNotFound
from cni.invoke import Exec, raise_for_failure
from cni.skel import CmdArgs, config_field, go_json_type

from .delegate import default_exec, run_delegate
from .netconf import go_oserror, internal, load_netconf

__all__ = ["cmd_del"]


def cmd_del(args: CmdArgs, *, exec_: Exec | None, environ: Mapping[str, str],
            stderr: io.TextIOBase | None = None) -> None:
    """DEL: run the delegate's DEL with the saved config, then remove it. No saved
    config: success without calling the delegate (spec: DEL of what is gone)."""
    try:
        conf = load_netconf(args.stdin_data)
    except ValueError as exc:
        raise internal(str(exc)) from None
    path = os.path.join(conf.data_dir, args.container_id)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise internal(go_oserror("open", path, exc)) from exc
    try:
        saved = _saved_conf(data)
    except ValueError as exc:
        # flannel: the interface stays on the bridge until the node reboots.
        err = stderr or sys.stderr
        err.write(f"failed to parse netconf: {exc}")  # Go's fmt.Fprintf, no newline
        err.flush()
        return None
    try:
        output = run_delegate(exec_ or default_exec(), "DEL", saved.get("type") or "", data,
                              args, environ, stderr)
    except PluginNotFound as exc:
        raise internal(exc.msg) from None
    raise_for_failure(output, plugin=saved.get("type") or "", command="DEL")
    try:
        os.remove(path)
    except OSError:
        pass  # per spec, safe to continue during DEL
    return None


def _saved_conf(data: bytes) -> Mapping[str, object]:
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


