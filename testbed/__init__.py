"""The one test rig: what tests, ``make demo``, ``make demo-cluster`` and ``make bench``
build their throwaway worlds from.

- ``testbed.process``  running commands, waiting, stopping processes; the environment
                       processes inside our namespaces get (no proxies, the repo on
                       ``PYTHONPATH``)
- ``testbed.netns``    throwaway network namespaces (a node, an underlay, a pod), veths
- ``testbed.server``   cri-shim serving inside a node namespace, with its TOML config,
                       its CRI stubs, ``ctl``, its log, and what it left behind
- ``testbed.pods``     kubelet-shaped pod configs and conflists
- ``testbed.etcd``     etcd in a namespace; ``testbed.cluster`` three nodes over VXLAN
- ``testbed.registry`` Debian's docker-registry in a namespace (htpasswd or token auth,
                       blob redirects), and HTTP from inside a namespace
- ``testbed.imagebuild`` images built from Debian's busybox-static, offline, pushed
                       with skopeo (OCI, Docker schema 2, zstd, indexes, archives)

Everything lives in namespaces and directories made here and is removed again by
``close()``/``stop()``, also after a failure; nothing touches the host's network.
Standard library, ``grpc`` and the project's own packages only.
"""
