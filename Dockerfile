# cri-shim as a node daemon image: Debian bookworm-slim, our wheel, and the OCI runtime,
# monitor and CNI plugins from Debian. Build from a checkout, with Python 3.11 (the
# wheels must suit bookworm's python3):
#   pip wheel -w dist .  &&  buildah bud -t cri-shim .   (or docker/podman build)
# `pip wheel` puts our wheel and every pinned dependency in dist/; the image installs
# from there only (no index: the same wheels every time, no network needed for it).
# deploy/cri-shim.yaml runs it as a DaemonSet (privileged, host network, host paths).
FROM debian:bookworm-slim

# What the runtime runs: runc (and crun), conmon, catatonit (a pod's PID 1), the CNI
# plugins (in /usr/lib/cni; the config also looks in /opt/cni/bin, where a node's
# own plugins are mounted), iproute2/iptables/util-linux for the plugins and the
# netns pinning fallback.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv runc crun conmon catatonit containernetworking-plugins \
      iproute2 iptables util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

COPY dist/*.whl /tmp/wheels/
RUN python3 -m venv /opt/cri-shim \
 && /opt/cri-shim/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
      --find-links /tmp/wheels cri-shim \
 && ln -s /opt/cri-shim/bin/cri-shim /usr/local/bin/cri-shim \
 && rm -rf /tmp/wheels

ENTRYPOINT ["/usr/local/bin/cri-shim"]
CMD ["serve", "--config", "/etc/cri-shim/config.toml"]
