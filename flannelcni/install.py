"""Install the flannel CNI plugin into a CNI bin dir as an executable named ``flannel``.

The plugin needs only the standard library and the ``cni``, ``atomicfile`` and
``flannelcni`` packages (not the agent's ``flannel``),
so the installed file is a tiny launcher that runs Python with ``-S`` (no site
packages, no .pth processing: tens of milliseconds less per exec) and puts the
directory holding those packages first on ``sys.path``. kubelet/containerd-style
runtimes exec it like any other plugin.

Installing byte-compiles those packages: under a runtime started with
``PYTHONDONTWRITEBYTECODE`` (or run as a user who cannot write ``__pycache__``) the
plugin would otherwise compile every changed module at every exec, which costs more
than the imports themselves.

    python -m flannelcni.install /opt/cni/bin      (or: cri-shim install-flannel DIR)
"""

from __future__ import annotations

import os
import sys

LAUNCHER = """#!{python} -S
# flannel CNI plugin (cri-shim), installed by flannelcni.install
import sys
sys.path.insert(0, {path!r})
from flannelcni.plugin import main
sys.exit(main())
"""


def install(bin_dir: str, *, python: str | None = None) -> str:
    """Write ``<bin_dir>/flannel`` (0755, atomically); returns its path."""
    packages = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = LAUNCHER.format(python=python or sys.executable, path=packages)
    os.makedirs(bin_dir, exist_ok=True)
    target = os.path.join(bin_dir, "flannel")
    tmp = f"{target}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    _compile(packages)
    return target


def _compile(packages: str) -> None:
    import compileall
    for package in ("cni", "atomicfile", "flannelcni"):
        try:
            compileall.compile_dir(os.path.join(packages, package), maxlevels=0, quiet=2)
        except OSError:
            pass  # read-only: the plugin still runs, compiling as it imports


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: cri-shim install-flannel BIN_DIR   (or: python -m flannelcni.install BIN_DIR)",
              file=sys.stderr)
        return 2
    print(install(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
