"""containerd's ``conf_template``: a CNI config rendered when kubelet sends the pod CIDR.

When ``UpdateRuntimeConfig`` brings the node's pod CIDR(s), ``conf_template`` is set and
no network config is loaded yet, containerd renders the template (Go ``text/template``)
into ``<conf_dir>/10-containerd-net.conflist`` with three values: ``.PodCIDR`` (the
first range), ``.PodCIDRRanges`` (all of them) and ``.Routes`` (a default route per
family). We render the subset of ``text/template`` such templates use: ``{{.Field}}``,
``{{range $i, $v := .Field}} ... {{end}}``, ``{{range .Field}} ... {{.}} ... {{end}}``,
``{{if $i}} ... {{end}}`` (also ``{{else}}``), ``{{$v}}``, and ``{{-``/``-}}`` trimming.
Anything else is an error naming the action, rather than a silently wrong config.
The file is written atomically (containerd truncates it in place, so a watcher can
read half a file).
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, Mapping, Sequence

from atomicfile import write_atomic

CONF_FILENAME = "10-containerd-net.conflist"

_ACTION = re.compile(r"\{\{(-\s*)?(.*?)(\s*-)?\}\}", re.S)


class TemplateError(ValueError):
    pass


def template_values(pod_cidrs: Sequence[str]) -> dict[str, Any]:
    """containerd's ``cniConfigTemplate`` for these pod CIDRs."""
    routes = []
    for cidr in pod_cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        routes.append("0.0.0.0/0" if net.version == 4 else "::/0")
    return {"PodCIDR": pod_cidrs[0], "PodCIDRRanges": list(pod_cidrs), "Routes": routes}


def render(template: str, values: Mapping[str, Any]) -> str:
    tokens = _tokenize(template)
    out, pos = _render(tokens, 0, dict(values), {}, stop=())
    if pos != len(tokens):
        raise TemplateError(f"unexpected {{{{{tokens[pos][1]}}}}}")
    return out


def write_conf(conf_dir: str, template_path: str, pod_cidrs: Sequence[str]) -> str:
    """Render *template_path* for *pod_cidrs* into the conf dir; returns the path."""
    with open(template_path, encoding="utf-8") as f:
        text = render(f.read(), template_values(pod_cidrs))
    os.makedirs(conf_dir, exist_ok=True)
    path = os.path.join(conf_dir, CONF_FILENAME)
    write_atomic(path, text.encode(), mode=0o644)
    return path


def _tokenize(text: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)], with ``{{-``/``-}}`` trimming applied."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(text):
        chunk = text[pos:m.start()]
        if m.group(1):
            chunk = chunk.rstrip()
        tokens.append(("text", chunk))
        tokens.append(("action", m.group(2).strip()))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    tokens.append(("text", text[pos:]))
    return tokens


def _value(expr: str, values: Mapping[str, Any], scope: Mapping[str, Any]) -> Any:
    if expr == ".":
        if "." not in scope:
            raise TemplateError("{{.}} outside a range")
        return scope["."]
    if expr.startswith("$"):
        if expr not in scope:
            raise TemplateError(f"undefined variable {expr}")
        return scope[expr]
    if expr.startswith(".") and expr[1:] in values:
        return values[expr[1:]]
    raise TemplateError(f"unsupported or unknown template value {{{{{expr}}}}} "
                        f"(known: {', '.join('.' + k for k in values)})")


def _render(tokens: list[tuple[str, str]], pos: int, values: dict[str, Any],
            scope: dict[str, Any], stop: tuple[str, ...]) -> tuple[str, int]:
    out: list[str] = []
    while pos < len(tokens):
        kind, body = tokens[pos]
        if kind == "text":
            out.append(body)
            pos += 1
            continue
        if body in stop:
            return "".join(out), pos
        pos += 1
        if body.startswith("range "):
            m = re.fullmatch(r"range\s+(?:(\$\w+)\s*,\s*(\$\w+)\s*:=\s*)?(\S+)", body)
            if not m:
                raise TemplateError(f"unsupported range {{{{{body}}}}}")
            items = _value(m.group(3), values, scope)
            start, chunks = pos, []
            for i, item in enumerate(items):
                inner = dict(scope, **{".": item})
                if m.group(1):
                    inner[m.group(1)], inner[m.group(2)] = i, item
                text, pos = _render(tokens, start, values, inner, stop=("end",))
                chunks.append(text)
            if not items:  # still find the matching end
                _, pos = _render(tokens, start, values, dict(scope, **{".": None}), stop=("end",))
            pos = _expect(tokens, pos, "end")
            out.append("".join(chunks))
        elif body.startswith("if "):
            cond = bool(_value(body[3:].strip(), values, scope))
            then, pos = _render(tokens, pos, values, scope, stop=("else", "end"))
            other = ""
            if pos < len(tokens) and tokens[pos][1] == "else":
                other, pos = _render(tokens, pos + 1, values, scope, stop=("end",))
            pos = _expect(tokens, pos, "end")
            out.append(then if cond else other)
        elif body in ("end", "else"):
            raise TemplateError(f"unexpected {{{{{body}}}}}")
        else:
            out.append(str(_value(body, values, scope)))
    if stop:
        raise TemplateError(f"missing {{{{{stop[-1]}}}}}")
    return "".join(out), pos


def _expect(tokens: list[tuple[str, str]], pos: int, word: str) -> int:
    if pos >= len(tokens) or tokens[pos] != ("action", word):
        raise TemplateError(f"missing {{{{{word}}}}}")
    return pos + 1
