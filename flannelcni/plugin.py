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

Started once per pod ADD/DEL, so the program is split by what each invocation needs:
this module answers VERSION and the ``about`` line with ``cni.skel`` alone, and each
command's own module (``flannelcni.add``, ``flannelcni.delete``, sharing
``flannelcni.netconf`` and ``flannelcni.delegate``) is loaded when that command runs:
ADD brings ``ipaddress``, subnet.env and the result types, DEL neither. Issue 5 gives
the plugin 25 ms over its delegate, interpreter start included;
``tests/unit/test_plugin_startup.py`` keeps the imports down, and ``python -S -X
importtime`` on the installed launcher shows them.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping, Sequence

from cni.invoke import Exec
from cni.skel import CmdArgs, plugin_main
from cni.version import SUPPORTED_VERSIONS

__all__ = ["ABOUT", "UPSTREAM_VERSION", "run", "main"]


def _goarch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


# skel's BuildString("flannel") for the release whose behaviour this port follows; the
# commit field names us.
UPSTREAM_VERSION = "v1.9.1"
ABOUT = f"CNI Plugin flannel version {UPSTREAM_VERSION} (linux/{_goarch()}) commit cri-shim"


def run(*, exec_: Exec | None = None, environ: Mapping[str, str] | None = None,
        stdin: io.BufferedIOBase | bytes | None = None, stdout: io.BufferedIOBase | None = None,
        stderr: io.TextIOBase | None = None, argv: Sequence[str] | None = None) -> int:
    """One plugin invocation with injectable delegate runner, environment and streams
    (tests run it in-process with a fake ``Exec``); returns the exit code."""
    env = os.environ if environ is None else environ

    def add(args: CmdArgs) -> object:
        from .add import cmd_add
        return cmd_add(args, exec_=exec_, environ=env, stderr=stderr)

    def delete(args: CmdArgs) -> object:
        from .delete import cmd_del
        return cmd_del(args, exec_=exec_, environ=env, stderr=stderr)

    return plugin_main(add, delete,
                       lambda args: None,  # flannel's cmdCheck: "TODO: implement"
                       supported_versions=SUPPORTED_VERSIONS, about=ABOUT, argv=argv,
                       environ=env, stdin=stdin, stdout=stdout, stderr=stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: the ``flannel`` plugin executable."""
    return run(argv=argv)


if __name__ == "__main__":
    sys.exit(main())
