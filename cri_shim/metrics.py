"""Prometheus metrics (containerd's ``[metrics] address``), from ``prometheus-client``.

Served at ``http://<address>/metrics`` when an address is configured (off by default,
as in containerd):

- every CRI call, in go-grpc-prometheus' names, which containerd serves:
  ``grpc_server_started_total``, ``grpc_server_handled_total`` (by ``grpc_code``) and
  the latency histogram ``grpc_server_handling_seconds`` (containerd draws it only
  with ``grpc_histogram = true``; here it is on unless that key says false);
- every CNI plugin exec, modelled on containerd's and kubelet's
  ``network_plugin_operations_*``, by ``plugin`` and ``operation_type`` (the CNI
  command): ``cri_shim_network_plugin_operations_total``, ``..._errors_total`` and
  ``..._duration_seconds``;
- ``cri_shim_sandboxes`` and ``cri_shim_containers`` by ``state``, counted when
  scraped;
- the process' own (``process_resident_memory_bytes``, open fds, CPU seconds).

Each server has a registry of its own; the hooks it listens on (``cri_shim.rpc``'s and
libcni's observers) are the process', so one process serves one server's metrics.
Unary calls only: the GetContainerEvents stream is not counted.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from typing import Any, Callable, Iterable

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server

import libcni

from . import rpc
from .api import api_pb2 as pb
from .config import MetricsSettings

__all__ = ["Metrics"]

log = logging.getLogger(__name__)

# Buckets of go-grpc-prometheus (prometheus.DefBuckets), seconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _services() -> dict[str, str]:
    """Method name -> full service name, for the grpc_service label."""
    out = {}
    for name, service in pb.DESCRIPTOR.services_by_name.items():
        for method in service.methods_by_name:
            out.setdefault(method, f"runtime.v1.{name}")
    return out


class Metrics:
    """The metrics of one server; *sandbox_states* and *container_states* give the
    current records' states when scraped."""

    def __init__(self, settings: MetricsSettings, *,
                 sandbox_states: Callable[[], Iterable[str]] = lambda: (),
                 container_states: Callable[[], Iterable[str]] = lambda: ()) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self._services = _services()
        rpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter("grpc_server_started_total", "Total number of RPCs started on the server.",
                               rpc_labels, registry=self.registry)
        self.handled = Counter("grpc_server_handled_total",
                               "Total number of RPCs completed on the server, regardless of success or failure.",
                               rpc_labels + ("grpc_code",), registry=self.registry)
        self.handling = Histogram("grpc_server_handling_seconds",
                                  "Histogram of response latency (seconds) of gRPC that had been "
                                  "application-level handled by the server.",
                                  rpc_labels, buckets=_BUCKETS, registry=self.registry) \
            if settings.grpc_histogram else None
        cni_labels = ("plugin", "operation_type")
        self.plugin_ops = Counter("cri_shim_network_plugin_operations_total",
                                  "Cumulative number of network plugin operations by plugin and operation type.",
                                  cni_labels, registry=self.registry)
        self.plugin_errors = Counter("cri_shim_network_plugin_operations_errors_total",
                                     "Cumulative number of failed network plugin operations by plugin "
                                     "and operation type.", cni_labels, registry=self.registry)
        self.plugin_latency = Histogram("cri_shim_network_plugin_operations_duration_seconds",
                                        "Latency in seconds of network plugin operations, by plugin "
                                        "and operation type.", cni_labels, buckets=_BUCKETS,
                                        registry=self.registry)
        self.registry.register(_StateCollector(sandbox_states, container_states))
        ProcessCollector(registry=self.registry)
        self._server: Any = None

    # -- the observers -----------------------------------------------------------------

    def _labels(self, method: str) -> tuple[str, str, str]:
        return ("unary", self._services.get(method, "crishim.v1.Admin"), method)

    def observe_start(self, method: str) -> None:
        self.started.labels(*self._labels(method)).inc()

    def observe_rpc(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        labels = self._labels(method)
        self.handled.labels(*labels, _code_name(code)).inc()
        if self.handling is not None:
            self.handling.labels(*labels).observe(seconds)

    def observe_plugin(self, record: libcni.PluginExec) -> None:
        labels = (record.plugin, record.command)
        self.plugin_ops.labels(*labels).inc()
        if record.outcome != "ok":
            self.plugin_errors.labels(*labels).inc()
        self.plugin_latency.labels(*labels).observe(record.duration)

    # -- serving -----------------------------------------------------------------------

    def start(self) -> None:
        """Observe calls and execs; serve on the configured address, if any."""
        rpc.observers.append(self.observe_rpc)
        rpc.start_observers.append(self.observe_start)
        libcni.add_observer(self.observe_plugin)
        if not self.settings.address:
            return
        host, port = _split(self.settings.address)
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s/metrics", self.address)

    @property
    def address(self) -> str:
        if self._server is None:
            return ""
        host, port = self._server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def stop(self) -> None:
        if self.observe_rpc in rpc.observers:
            rpc.observers.remove(self.observe_rpc)
        if self.observe_start in rpc.start_observers:
            rpc.start_observers.remove(self.observe_start)
        libcni.remove_observer(self.observe_plugin)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _code_name(code: grpc.StatusCode) -> str:
    """go-grpc-prometheus' spelling of a code (Go's ``codes.Code.String()``): ``OK``,
    ``NotFound``, ``DeadlineExceeded``, ``Canceled`` (one L)."""
    if code == grpc.StatusCode.OK:
        return "OK"
    if code == grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(part.capitalize() for part in code.name.split("_"))


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address {address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


class _StateCollector:
    def __init__(self, sandboxes: Callable[[], Iterable[str]],
                 containers: Callable[[], Iterable[str]]) -> None:
        self.sandboxes, self.containers = sandboxes, containers

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, states, help_ in (
                ("cri_shim_sandboxes", self.sandboxes, "Pod sandboxes by state."),
                ("cri_shim_containers", self.containers, "Containers by state.")):
            family = GaugeMetricFamily(name, help_, labels=("state",))
            for state, count in sorted(Tally(states()).items()):
                family.add_metric((state,), count)
            yield family
