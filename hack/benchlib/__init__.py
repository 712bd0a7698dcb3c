"""The pieces of ``hack/bench`` (issue 5): cri-shim measured against the raw CNI chain.

Modules, one job each:

- ``cli``          the command line; the run inside the node netns
- ``node``         the throwaway node netns and work dir, the conflists, and the
                   supervisor that always removes them (also on failure or Ctrl-C)
- ``rawchain``     the floor: pin a netns and run each plugin's ADD/DEL the way
                   libcni would, with no cri-shim code on the path
- ``shim``         cri-shim serving inside the node netns, and a timed gRPC client
- ``context``      what the parts share (sizes, server, raw chain, a thread pool)
- ``latency``, ``concurrency``, ``scale``, ``flannelpart``: the four parts
- ``profile``      ``--profile``: py-spy over the server, folded into where time goes
- ``stats``        median / p95 / p99, and /proc readings of the server
- ``report``       the targets, the table on stdout, and the JSON
- ``plot``         PNGs with matplotlib, when it is importable

Nothing here touches the host's network: every link, rule and address lives in the
node namespace the supervisor makes, and every file in its temp dir.
"""
