"""A CNI runtime library: libcni's behaviour, in Python.

Modules, split like libcni: ``errors`` (the error tree and spec codes), ``version``
(spec versions), ``result`` (results in every version), ``conf`` (parse and load
network configurations; never execs), ``invoke`` (environment, exec, decode: the
``Exec`` seam), ``cache`` (libcni's result cache files) and ``api`` (``CNIConfig``:
ADD/DEL/CHECK/STATUS/GC over a list). Everything public is re-exported here.
"""

import logging

from .api import CNIConfig, GCAttachment, RuntimeConf, validate_attachment
from .cache import CACHE_KIND, CacheEntry, ResultCache
from .conf import (CONF_EXTENSIONS, ConfDirLoad, NetworkConfigList, PluginConf, SkippedFile,
                   conf_from_bytes, conflist_from_bytes, conflist_from_file, load_conf_dir)
from .errors import (ERR_DECODING_FAILURE, ERR_INCOMPATIBLE_VERSION, ERR_INTERNAL,
                     ERR_INVALID_ENV, ERR_INVALID_NETNS, ERR_INVALID_NETWORK_CONFIG,
                     ERR_IO_FAILURE, ERR_PLUGIN_NOT_AVAILABLE, ERR_PLUGIN_NOT_AVAILABLE_LIMITED,
                     ERR_TRY_AGAIN_LATER, ERR_UNKNOWN, ERR_UNKNOWN_CONTAINER,
                     ERR_UNSUPPORTED_FIELD, CNIError, CommandNotSupported, ConfigError,
                     ExecTimeout, InvalidPluginOutput, PluginError, PluginNotFound)
from .invoke import (Exec, ExecOutput, PluginInfo, RawExec, build_env, decode_output,
                     exec_plugin, find_plugin, get_version_info)
from .result import DNS, Interface, IPConfig, Result, Route, parse_result
from .version import (CURRENT_VERSION, SUPPORTED_VERSIONS, command_supported, is_supported,
                      negotiate_version, parse_version, prev_result_on_del, version_ge)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    # api
    "CNIConfig", "RuntimeConf", "GCAttachment", "validate_attachment",
    # cache
    "CACHE_KIND", "CacheEntry", "ResultCache",
    # conf
    "CONF_EXTENSIONS", "ConfDirLoad", "NetworkConfigList", "PluginConf", "SkippedFile",
    "conf_from_bytes", "conflist_from_bytes", "conflist_from_file", "load_conf_dir",
    # errors
    "ERR_UNKNOWN", "ERR_INCOMPATIBLE_VERSION", "ERR_UNSUPPORTED_FIELD",
    "ERR_UNKNOWN_CONTAINER", "ERR_INVALID_ENV", "ERR_IO_FAILURE", "ERR_DECODING_FAILURE",
    "ERR_INVALID_NETWORK_CONFIG", "ERR_INVALID_NETNS", "ERR_TRY_AGAIN_LATER",
    "ERR_PLUGIN_NOT_AVAILABLE", "ERR_PLUGIN_NOT_AVAILABLE_LIMITED", "ERR_INTERNAL",
    "CNIError", "PluginError", "InvalidPluginOutput", "ExecTimeout", "PluginNotFound",
    "ConfigError", "CommandNotSupported",
    # invoke
    "Exec", "ExecOutput", "PluginInfo", "RawExec", "build_env", "decode_output",
    "exec_plugin", "find_plugin", "get_version_info",
    # result
    "DNS", "Interface", "IPConfig", "Result", "Route", "parse_result",
    # version
    "CURRENT_VERSION", "SUPPORTED_VERSIONS", "command_supported", "is_supported",
    "negotiate_version", "parse_version", "prev_result_on_del", "version_ge",
]
