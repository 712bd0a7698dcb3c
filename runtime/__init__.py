"""The container runtime driver: OCI runtimes (runc, crun) run through conmon, the
per-container monitor CRI-O uses; overlay rootfs mounts; cgroup statistics. Nothing
here knows CRI or gRPC."""
