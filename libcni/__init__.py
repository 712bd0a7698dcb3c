"""The runtime side of CNI: libcni, in Python.

Split as libcni is: ``libcni.conf`` parses and loads network configurations and never
execs; ``libcni.cache`` reads and writes libcni's result cache files;
``libcni.plugins`` runs one plugin command (exec, decode, one log line);
``libcni.api`` (``CNIConfig``) runs ADD/DEL/CHECK/STATUS/GC over a list and owns the
cache; ``libcni.testing`` is the fake ``Exec`` tests use. Below it is the plugin side,
``cni`` (errors, versions, results, invocation, the skeleton), whose public names are
re-exported here with this package's own, so a runtime imports one package.

The library logs to ``logging.getLogger("libcni...")`` and installs no handler but a
``NullHandler``.
"""

from __future__ import annotations

import logging

from cni.errors import (ERR_DECODING_FAILURE, ERR_INCOMPATIBLE_VERSION, ERR_INTERNAL,
                        ERR_INVALID_ENV, ERR_INVALID_NETNS, ERR_INVALID_NETWORK_CONFIG,
                        ERR_IO_FAILURE, ERR_PLUGIN_NOT_AVAILABLE,
                        ERR_PLUGIN_NOT_AVAILABLE_LIMITED, ERR_TRY_AGAIN_LATER, ERR_UNKNOWN,
                        ERR_UNKNOWN_CONTAINER, ERR_UNSUPPORTED_FIELD, CNIError,
                        CommandNotSupported, ConfigError, DeadlineExceeded, ExecTimeout,
                        InvalidPluginOutput, PluginError, PluginNotFound)
from cni.invoke import Exec, ExecOutput, RawExec, build_env, find_plugin, raise_for_failure
from cni.result import DNS, Interface, IPConfig, Result, Route, parse_result, result_from_output
from cni.version import (CURRENT_VERSION, SUPPORTED_VERSIONS, command_supported, is_supported,
                         negotiate_version, parse_version, prev_result_on_del, version_ge)

from .api import CNIConfig, GCAttachment, RuntimeConf, validate_attachment
from .cache import CACHE_KIND, CacheEntry, ResultCache
from .conf import (CONF_EXTENSIONS, ConfDirLoad, NetworkConfigList, PluginConf, SkippedFile,
                   conf_from_bytes, conflist_from_bytes, conflist_from_file, load_conf_dir)
from .plugins import (PluginExec, PluginInfo, add_observer, decode_output, exec_plugin,
                      get_version_info, remove_observer)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    # api
    "CNIConfig", "RuntimeConf", "GCAttachment", "validate_attachment",
    # cache
    "CACHE_KIND", "CacheEntry", "ResultCache",
    # conf
    "CONF_EXTENSIONS", "ConfDirLoad", "NetworkConfigList", "PluginConf", "SkippedFile",
    "conf_from_bytes", "conflist_from_bytes", "conflist_from_file", "load_conf_dir",
    # plugins
    "PluginInfo", "exec_plugin", "decode_output", "get_version_info", "PluginExec",
    "add_observer", "remove_observer",
    # cni.errors
    "ERR_UNKNOWN", "ERR_INCOMPATIBLE_VERSION", "ERR_UNSUPPORTED_FIELD",
    "ERR_UNKNOWN_CONTAINER", "ERR_INVALID_ENV", "ERR_IO_FAILURE", "ERR_DECODING_FAILURE",
    "ERR_INVALID_NETWORK_CONFIG", "ERR_INVALID_NETNS", "ERR_TRY_AGAIN_LATER",
    "ERR_PLUGIN_NOT_AVAILABLE", "ERR_PLUGIN_NOT_AVAILABLE_LIMITED", "ERR_INTERNAL",
    "CNIError", "PluginError", "InvalidPluginOutput", "ExecTimeout", "DeadlineExceeded",
    "PluginNotFound", "ConfigError", "CommandNotSupported",
    # cni.invoke
    "Exec", "ExecOutput", "RawExec", "build_env", "find_plugin", "raise_for_failure",
    # cni.result
    "DNS", "Interface", "IPConfig", "Result", "Route", "parse_result", "result_from_output",
    # cni.version
    "CURRENT_VERSION", "SUPPORTED_VERSIONS", "command_supported", "is_supported",
    "negotiate_version", "parse_version", "prev_result_on_del", "version_ge",
]
