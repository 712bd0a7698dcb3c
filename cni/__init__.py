"""A CNI runtime library: libcni's behaviour, in Python.

Modules, split like libcni: ``errors`` (the error tree and spec codes), ``version``
(spec versions), ``result`` (results in every version), ``conf`` (parse and load
network configurations; never execs), ``invoke`` (environment, exec, decode: the
``Exec`` seam), ``cache`` (libcni's result cache files) and ``api`` (``CNIConfig``:
ADD/DEL/CHECK/STATUS/GC over a list). Everything public is re-exported here.
"""

from __future__ import annotations

import importlib

# Names are loaded on first use (PEP 562): a CNI plugin built on cni.skel starts in
# a few milliseconds instead of importing the whole runtime side (api, cache, conf).
# Nothing here imports logging or typing (~10 ms a plugin exec would pay); the
# library's NullHandler is installed when the runtime side is first used.
_LAZY = {
    **dict.fromkeys(['CNIConfig', 'GCAttachment', 'RuntimeConf', 'validate_attachment'], "api"),
    **dict.fromkeys(['CACHE_KIND', 'CacheEntry', 'ResultCache'], "cache"),
    **dict.fromkeys(['CONF_EXTENSIONS', 'ConfDirLoad', 'NetworkConfigList', 'PluginConf', 'SkippedFile', 'conf_from_bytes', 'conflist_from_bytes', 'conflist_from_file', 'load_conf_dir'], "conf"),
    **dict.fromkeys(['CNIError', 'CommandNotSupported', 'ConfigError', 'ERR_DECODING_FAILURE', 'ERR_INCOMPATIBLE_VERSION', 'ERR_INTERNAL', 'ERR_INVALID_ENV', 'ERR_INVALID_NETNS', 'ERR_INVALID_NETWORK_CONFIG', 'ERR_IO_FAILURE', 'ERR_PLUGIN_NOT_AVAILABLE', 'ERR_PLUGIN_NOT_AVAILABLE_LIMITED', 'ERR_TRY_AGAIN_LATER', 'ERR_UNKNOWN', 'ERR_UNKNOWN_CONTAINER', 'ERR_UNSUPPORTED_FIELD', 'DeadlineExceeded', 'ExecTimeout', 'InvalidPluginOutput', 'PluginError', 'PluginNotFound'], "errors"),
    **dict.fromkeys(['Exec', 'ExecOutput', 'PluginInfo', 'RawExec', 'build_env', 'decode_output', 'exec_plugin', 'find_plugin', 'get_version_info'], "invoke"),
    **dict.fromkeys(['DNS', 'IPConfig', 'Interface', 'Result', 'Route', 'parse_result'], "result"),
    **dict.fromkeys(['CURRENT_VERSION', 'SUPPORTED_VERSIONS', 'command_supported', 'is_supported', 'negotiate_version', 'parse_version', 'prev_result_on_del', 'version_ge'], "version"),
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cni' has no attribute {name!r}")
    if "_null_handler" not in globals():
        import logging
        logging.getLogger(__name__).addHandler(logging.NullHandler())
        globals()["_null_handler"] = True
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "CNIError", "PluginError", "InvalidPluginOutput", "ExecTimeout", "DeadlineExceeded",
    "PluginNotFound",
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
