"""The agent's Prometheus metrics (``cri-shim agent --metrics-address HOST:PORT``),
read from the agent when scraped:

- ``cri_shim_agent_lease_renewals_total``, ``cri_shim_agent_lease_renewal_failures_total``
- ``cri_shim_agent_peers``: the nodes this one has overlay routes to
- ``cri_shim_agent_lease_expiry_timestamp_seconds``: when this node's podCIDR lease
  ends (absent without a lease, or a lease that does not expire), labelled by subnet
- the process' own (``process_*``)
"""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server

__all__ = ["registry_for", "serve_metrics"]


class _AgentCollector:
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self) -> Iterable[Any]:
        a = self.agent
        yield CounterMetricFamily("cri_shim_agent_lease_renewals", "podCIDR lease renewals.",
                                  value=a.renewals)
        yield CounterMetricFamily("cri_shim_agent_lease_renewal_failures",
                                  "podCIDR lease renewals refused or failed.", value=a.renewal_failures)
        yield GaugeMetricFamily("cri_shim_agent_peers", "Peers with overlay routes from this node.",
                                value=len(a.peers))
        expiry = GaugeMetricFamily("cri_shim_agent_lease_expiry_timestamp_seconds",
                                   "When this node's podCIDR lease expires (Unix time).",
                                   labels=("subnet",))
        lease = a.lease
        if lease is not None and lease.expires_at is not None:
            expiry.add_metric((str(lease.subnet),), lease.expires_at)
        yield expiry


def registry_for(agent: Any) -> CollectorRegistry:
    """A registry of *agent*'s metrics (and the process')."""
    registry = CollectorRegistry()
    registry.register(_AgentCollector(agent))
    ProcessCollector(registry=registry)
    return registry


def serve_metrics(agent: Any, address: str) -> Any:
    """Serve *agent*'s metrics at ``http://address/metrics`` in a thread; the server."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    server, _ = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0",
                                  registry=registry_for(agent))
    return server
