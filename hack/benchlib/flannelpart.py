"""The flannel plugin's cost: ADD/DEL through ``flannel`` versus its delegate alone.

The plugin (``flannelcni/plugin.py``) is a Python program started once per ADD and DEL;
it reads ``subnet.env``, writes the delegate config to ``<dataDir>/<containerID>``
and execs the delegate (bridge). The comparison runs both through the raw chain
(pin + ADD, DEL + unpin), interleaved: A = a conflist with the flannel plugin, B =
a conflist whose only plugin is exactly the delegate config flannel wrote (read
back from its dataDir after a warm-up ADD), so the difference is what flannel adds:
an interpreter start, its imports, the file read and write, one more exec.

A plugin that does not answer VERSION fails the part.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from .context import Context
from .node import FLANNEL_NETWORK, FLANNEL_SUBNET
from .rawchain import Network, RawChain
from .stats import summary

NAME = "flannelnet"
VERSION = "1.0.0"


def install_plugin(bin_dir: Path) -> tuple[Path, str]:
    """The ``flannel`` executable in *bin_dir*, as ``cri-shim install-flannel`` makes
    it; returns its path and how it was made."""
    from flannelcni.install import install
    return Path(install(str(bin_dir))), "flannelcni.install (a python -S launcher)"


def availability(wrapper: Path) -> str | None:
    """None when the plugin answers VERSION, else why not."""
    proc = subprocess.run([str(wrapper)], input=b'{"cniVersion":"1.0.0"}', capture_output=True,
                          env=dict(os.environ, CNI_COMMAND="VERSION"), timeout=30)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()[-3:]
        return f"flannel VERSION exits {proc.returncode}: {' | '.join(tail)}"
    return None


def run(ctx: Context) -> dict[str, Any]:
    work = ctx.work
    wrapper, launcher = install_plugin(work.bin_dir)
    why = availability(wrapper)
    if why:
        raise RuntimeError(f"the installed flannel plugin does not answer VERSION: {why}")
    fdir = work.root / "flannel"
    fdir.mkdir(exist_ok=True)
    (fdir / "subnet.env").write_text(f"FLANNEL_NETWORK={FLANNEL_NETWORK}\nFLANNEL_SUBNET="
                                     f"{FLANNEL_SUBNET}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    data_dir = fdir / "data"
    flannel_conf = {"type": "flannel", "subnetFile": str(fdir / "subnet.env"),
                    "dataDir": str(data_dir),
                    # kube-flannel's delegate, on a bridge of its own; host-local's
                    # store in the temp dir through flannel's "ipam" section.
                    "delegate": {"hairpinMode": True, "isDefaultGateway": True, "bridge": "cni1"},
                    "ipam": {"type": "host-local", "dataDir": str(work.ipam_dir)}}
    bin_dirs = (str(work.bin_dir), *ctx.bin_dirs)
    via_flannel = RawChain([Network(NAME, VERSION, (flannel_conf,), "eth0")], bin_dirs,
                           str(work.raw_netns_dir))
    ctx.progress(f"flannel: {ctx.sizes.flannel_pairs} interleaved pairs")
    # The warm-up ADD also tells what the delegate is given, byte for byte.
    att = via_flannel.add("flannel-warmup")
    delegate = json.loads((data_dir / att.container_id).read_bytes())
    via_flannel.delete(att)
    delegate_plugin = {k: v for k, v in delegate.items() if k not in ("name", "cniVersion")}
    direct = RawChain([Network(NAME, delegate.get("cniVersion", VERSION), (delegate_plugin,), "eth0")],
                      bin_dirs, str(work.raw_netns_dir))
    samples: dict[str, list[float]] = {k: [] for k in ("flannel_add", "flannel_del",
                                                       "delegate_add", "delegate_del")}
    for i in range(ctx.sizes.flannel_pairs + 1):
        for side, chain in (("flannel", via_flannel), ("delegate", direct)):
            start = time.perf_counter()
            a = chain.add(f"fl-{side}-{i}")
            t_add = time.perf_counter() - start
            start = time.perf_counter()
            chain.delete(a)
            if i:   # pair 0 warms the delegate's bridge up
                samples[f"{side}_add"].append(t_add)
                samples[f"{side}_del"].append(time.perf_counter() - start)
    version = []
    for _ in range(max(5, ctx.sizes.flannel_pairs // 2)):
        start = time.perf_counter()
        subprocess.run([str(wrapper)], input=b'{"cniVersion":"1.0.0"}', capture_output=True,
                       env=dict(os.environ, CNI_COMMAND="VERSION"), check=True)
        version.append(time.perf_counter() - start)
    out: dict[str, Any] = {"available": True, "launcher": launcher, "delegate_config": delegate,
                           **{k: summary(v) for k, v in samples.items()},
                           "flannel_version_exec": summary(version)}
    out["added_add_median_ms"] = out["flannel_add"]["median_ms"] - out["delegate_add"]["median_ms"]
    out["added_del_median_ms"] = out["flannel_del"]["median_ms"] - out["delegate_del"]["median_ms"]
    return out
