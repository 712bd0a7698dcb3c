"""OCI runtime specs for containers: containerd's defaults and the small functions
(``oci.spec``) that change them; users and groups resolved in a rootfs; the default
seccomp profile. Nothing here knows CRI or gRPC: the CRI side chooses what to apply."""
