"""Pod config validation and what the network set-up is given."""

from __future__ import annotations

import pytest

from cri_shim.errors import InvalidArgument
from cri_shim.podconfig import parse_pod_config
from cri_shim.podnet import capability_args, cni_args

KUBELET_POD = {
    "metadata": {"name": "web", "namespace": "default", "uid": "u-1", "attempt": 0},
    "hostname": "web",
    "log_directory": "/var/log/pods/default_web_u-1",
    "dns_config": {"servers": ["10.96.0.10"], "searches": ["default.svc.cluster.local"],
                   "options": ["ndots:5"]},
    "port_mappings": [{"container_port": 80, "host_port": 8080},
                      {"protocol": "UDP", "container_port": 53}],
    "labels": {"io.kubernetes.pod.name": "web", "io.kubernetes.pod.namespace": "default",
               "io.kubernetes.pod.uid": "u-1"},
    "annotations": {"kubernetes.io/config.seen": "2026-11-28T00:00:00Z",
                    "kubernetes.io/config.source": "api"},
    "linux": {"cgroup_parent": "/kubepods/besteffort/podu-1",
              "security_context": {"namespace_options": {"pid": "CONTAINER"}}},
}


def test_kubelet_pod() -> None:
    spec = parse_pod_config(KUBELET_POD)
    assert (spec.name, spec.namespace, spec.uid, spec.attempt) == ("web", "default", "u-1", 0)
    assert not spec.host_network
    assert cni_args(spec.network, "abc") == (
        ("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web"),
        ("K8S_POD_INFRA_CONTAINER_ID", "abc"), ("K8S_POD_UID", "u-1"))
    caps = capability_args(spec.network)
    # Only the port published on the host goes to portmap.
    assert caps["portMappings"] == [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]
    assert caps["dns"] == {"servers": ["10.96.0.10"], "searches": ["default.svc.cluster.local"],
                           "options": ["ndots:5"]}
    assert caps["cgroupPath"] == "/kubepods/besteffort/podu-1"
    assert caps["io.kubernetes.cri.pod-annotations"] == KUBELET_POD["annotations"]


@pytest.mark.parametrize("mode", ["NODE", 2])
def test_host_network(mode) -> None:
    cfg = {"metadata": {"name": "h", "namespace": "kube-system"},
           "linux": {"security_context": {"namespace_options": {"network": mode}}}}
    assert parse_pod_config(cfg).host_network


@pytest.mark.parametrize("cfg, words", [
    ({}, "metadata is required"),
    ({"metadata": {"namespace": "d"}}, "metadata.name is required"),
    ({"metadata": {"name": "n"}}, "metadata.namespace is required"),
    ({"metadata": {"name": "a/b", "namespace": "d"}}, "must not contain '/'"),
    ({"metadata": {"name": "n", "namespace": "d"}, "port_mappings": [{"container_port": 0}]},
     "port_mappings[0].container_port 0 is not a port"),
    ({"metadata": {"name": "n", "namespace": "d"},
      "port_mappings": [{"container_port": 80, "host_port": 70000}]}, "host_port 70000"),
    ({"metadata": {"name": "n", "namespace": "d"},
      "linux": {"security_context": {"namespace_options": {"network": "TARGET"}}}}, "POD or NODE"),
])
def test_bad_pod_config(cfg, words) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_pod_config(cfg)
    assert words in str(exc.value)


def test_a_nul_byte_anywhere_is_invalid_naming_the_field() -> None:
    from cri_shim.api import api_pb2 as pb
    from cri_shim.errors import InvalidArgument
    from cri_shim.podconfig import reject_nul
    ok = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), command=["sh"])
    reject_nul(ok, "ContainerConfig")
    cases = [
        (pb.ContainerConfig(mounts=[pb.Mount(host_path="/a"), pb.Mount(host_path="/x\0y")]),
         "ContainerConfig.mounts[1].host_path contains a NUL byte"),
        (pb.ContainerConfig(command=["ok", "b\0d"]), "ContainerConfig.command[1] contains a NUL byte"),
        (pb.ContainerConfig(labels={"k\0": "v"}), "ContainerConfig.labels has a key with a NUL byte"),
        (pb.ContainerConfig(annotations={"k": "v\0"}), "ContainerConfig.annotations['k'] contains a NUL byte"),
        (pb.ContainerConfig(linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            apparmor_profile="x\0"))), "ContainerConfig.linux.security_context.apparmor_profile contains"),
    ]
    for msg, words in cases:
        with pytest.raises(InvalidArgument) as exc:
            reject_nul(msg, "ContainerConfig")
        assert words in str(exc.value)
