"""Container images: references, registries, content, snapshots. Knows nothing of CRI.

Split like containerd's image path:

- ``images.errors``     the error tree (the CRI layer maps it to gRPC codes)
- ``images.reference``  Docker's reference grammar and normalisation
- ``images.digest``     content digests, and hashing while writing
- ``images.manifest``   OCI and Docker manifests and indexes, platform matching
- ``images.hosts``      registry hosts as containerd configures them (hosts.toml, mirrors)
- ``images.registry``   the distribution API client: resolve, fetch, auth
- ``images.content``    the content store: blobs by digest, committed only when they match
- ``images.unpack``     a layer tar onto a snapshot directory, safely, with whiteouts
- ``images.snapshots``  one directory per layer chain, shared, reference-counted
- ``images.store``      the image store: id, repo tags and digests, surviving restarts
- ``images.service``    pull, status, list, remove, import, fs usage, on top of all of it
"""
