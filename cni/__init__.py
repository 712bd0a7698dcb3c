"""The CNI spec for plugins and the runtimes that run them: libcni's ``pkg/types``,
``pkg/version``, ``pkg/invoke`` and ``pkg/skel``, in Python.

This is the plugin side, and a plugin starts once per pod operation, so nothing here
imports more than the standard library's cheapest modules (no ``typing``,
``dataclasses``, ``logging`` or ``subprocess``), and this package imports none of its
modules by itself: import the one you need.

- ``cni.errors``   the error tree with the spec's numeric codes
- ``cni.version``  spec versions 0.1.0 to 1.1.0: comparison, negotiation, floors
- ``cni.gojson``   JSON the way Go's ``encoding/json`` writes and reads it
- ``cni.frozen``   the light frozen value class every type here derives from
- ``cni.result``   results of every version, libcni's conversions, reading an ADD's
- ``cni.invoke``   finding and running a plugin, reading its failure (``Exec``)
- ``cni.skel``     the skeleton a plugin's ``main`` calls

The runtime side (loading conf dirs, the chain, the cache, logging) is ``libcni``, which
re-exports everything public of both.
"""
