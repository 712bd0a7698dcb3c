"""flanneld's ``--ip-masq`` rules (flannel-io/flannel pkg/trafficmngr/iptables masqRules).

In the nat table, hooked from POSTROUTING through a ``FLANNEL-POSTRTG`` chain, each rule
commented ``flanneld masq``: RETURN for kube-proxy-marked packets (no double NAT), for
pod traffic to the cluster network, cluster traffic to this pod subnet, and outside
traffic to this pod subnet; MASQUERADE for cluster sources leaving the cluster network
(not multicast) and for outside sources headed into it. Installed in one
``iptables-restore --noflush`` transaction so the order is exact; on a clean exit the
rules (not the chain) are deleted again, as flanneld's iptables manager does.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger(__name__)

__all__ = ["CHAIN", "KUBE_PROXY_MARK", "Rule", "masq_rules", "IPMasq"]

CHAIN = "FLANNEL-POSTRTG"
KUBE_PROXY_MARK = "0x4000/0x4000"
_COMMENT = ["-m", "comment", "--comment", "flanneld masq"]

Run = Callable[..., subprocess.CompletedProcess]


@dataclass(frozen=True)
class Rule:
    """One rule of the nat table: ``-A <chain> <spec...>``."""

    chain: str
    spec: tuple[str, ...]

    def restore_line(self, action: str = "-A") -> str:
        """The rule as an iptables-restore line."""
        return " ".join([action, self.chain, *(_quote(a) for a in self.spec)])


def _quote(arg: str) -> str:
    # iptables-save's quoting, which iptables-restore reads back: double quotes around
    # arguments with spaces (the comment), everything else bare (`!` included).
    if arg and not any(c.isspace() or c in "\"'" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def masq_rules(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, *,
               random_fully: bool = True) -> list[Rule]:
    """flannel's IPv4 masquerade rules for cluster *network* and this node's *subnet*,
    in order (MASQUERADE gets ``--random-fully`` when iptables supports it)."""
    cluster, pod = str(network), str(subnet)
    masq = ["-j", "MASQUERADE"] + (["--random-fully"] if random_fully else [])
    specs = [
        ("POSTROUTING", [*_COMMENT, "-j", CHAIN]),
        (CHAIN, ["-m", "mark", "--mark", KUBE_PROXY_MARK, *_COMMENT, "-j", "RETURN"]),
        (CHAIN, ["-s", pod, "-d", cluster, *_COMMENT, "-j", "RETURN"]),
        (CHAIN, ["-s", cluster, "-d", pod, *_COMMENT, "-j", "RETURN"]),
        (CHAIN, ["!", "-s", cluster, "-d", pod, *_COMMENT, "-j", "RETURN"]),
        (CHAIN, ["-s", cluster, "!", "-d", "224.0.0.0/4", *_COMMENT, *masq]),
        (CHAIN, ["!", "-s", cluster, "-d", cluster, *_COMMENT, *masq]),
    ]
    return [Rule(chain, tuple(spec)) for chain, spec in specs]


class IPMasq:
    """Installs and removes the masquerade rules with the ``iptables`` commands of the
    current network namespace. *run* is ``subprocess.run``'s signature (tests fake it)."""

    def __init__(self, *, run: Run = subprocess.run, iptables: str = "iptables") -> None:
        self._run = run
        self._iptables = iptables
        self._rules: list[Rule] = []

    def _exec(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        return self._run(list(argv), input=stdin, capture_output=True, text=True)

    def random_fully(self) -> bool:
        """go-iptables' HasRandomFully: iptables 1.6.2 or later."""
        out = self._exec([self._iptables, "--version"]).stdout
        m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
        return bool(m) and tuple(int(x) for x in m.groups()) >= (1, 6, 2)

    def exists(self, rule: Rule) -> bool:
        """``iptables -C``: is *rule* in the nat table (a missing chain counts as no)?"""
        return self._exec([self._iptables, "-w", "-t", "nat", "-C", rule.chain, *rule.spec]).returncode == 0

    def ensure(self, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> bool:
        """Install the rules unless every one is already there; returns whether it wrote.
        Declaring the chain in the payload flushes it, so rules for an older lease or
        network go too; an existing POSTROUTING jump is deleted and appended again."""
        rules = masq_rules(network, subnet, random_fully=self.random_fully())
        self._rules = rules
        if all(self.exists(r) for r in rules):
            log.debug("masquerade rules for %s (pod subnet %s) already in place", network, subnet)
            return False
        lines = ["*nat", f":{CHAIN} - [0:0]"]
        if self.exists(rules[0]):
            lines.append(rules[0].restore_line("-D"))
        lines += [r.restore_line() for r in rules]
        lines.append("COMMIT")
        self._restore("\n".join(lines) + "\n")
        log.info("masquerade rules installed for %s (pod subnet %s)", network, subnet)
        return True

    def teardown(self) -> None:
        """Delete the rules ``ensure`` installed that are still there (flanneld's clean
        exit); the empty chain stays, as with flannel."""
        present = [r for r in self._rules if self.exists(r)]
        if present:
            self._restore("\n".join(["*nat", *(r.restore_line("-D") for r in present),
                                     "COMMIT"]) + "\n")
            log.info("masquerade rules removed")

    def _restore(self, payload: str) -> None:
        proc = self._exec([f"{self._iptables}-restore", "-w", "--noflush"], stdin=payload)
        if proc.returncode != 0:
            raise OSError(f"{self._iptables}-restore failed ({proc.returncode}): "
                          f"{proc.stderr.strip()}\n{payload}")
