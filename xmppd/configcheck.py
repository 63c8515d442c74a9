"""``xmppd check-config``: every problem of a configuration file at once.

:func:`~xmppd.config.load_config` stops at the server's own sections; this goes on to
the module and hook-file tables (read from the file even when the rest is invalid),
then checks what needs the whole configuration (certificates). Nothing is created.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from xmppd.config import ConfigError, load_config
from xmppd.configtext import KeyLines
from xmppd.modules import import_hookset, import_module, validate_options


def check_file(path: Path | None) -> list[str]:
    """The problems of the configuration at ``path`` (``None``: the built-in defaults),
    one line each; empty when it is valid."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert path is not None
        return exc.lines + _extension_problems(path)
    from xmppd.server import Server

    try:
        Server(config).check()
    except ConfigError as exc:
        return exc.lines
    return []


def _tables(raw: Mapping[str, Any], key: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(prefix, table) of the global ``key`` table and of each host's."""
    if isinstance(raw.get(key), Mapping):
        yield key, raw[key]
    hosts = raw.get("hosts")
    if isinstance(hosts, Mapping):
        for domain, host in hosts.items():
            if isinstance(host, Mapping) and isinstance(host.get(key), Mapping):
                yield f"hosts.{domain}.{key}", host[key]


def _extension_problems(path: Path) -> list[str]:
    """Problems of the ``[modules]`` and ``[hooks]`` tables, read from the raw file."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []  # already reported by load_config
    lines = KeyLines(text)
    source = str(path)
    found: list[str] = []
    for prefix, table in _tables(raw, "modules"):
        for name, options in table.items():
            try:
                validate_options(import_module(name), options, f"{prefix}.{name}", source, lines)
            except ConfigError as exc:
                line = lines.line_of(f"{prefix}.{name}")
                text_ = str(exc)
                if not text_.startswith(source):  # import problem: "name: no such module"
                    text_ = f"{source}: {prefix}.{text_}" + (f" (line {line})" if line else "")
                found.extend(text_.splitlines())
    for prefix, table in _tables(raw, "hooks"):
        for name, options in table.items():
            try:
                validate_options(import_hookset(name), options, f"{prefix}.{name}", source, lines)
            except ConfigError as exc:
                text_ = str(exc)
                found.extend(
                    (text_ if text_.startswith(source) else f"{source}: {text_}").splitlines()
                )
    return list(dict.fromkeys(found))
