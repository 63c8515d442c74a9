"""Configuration problems in the admin's words: where (key path and line) and what.

pydantic's own messages ("Input should be a valid integer, unable to parse string as
an integer") speak of Python; these speak of the TOML file. A key path is found in the
file's text by :class:`KeyLines`, and a mistyped key gets the nearest known key
(``difflib``) as a suggestion.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

_TABLE: Final = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY: Final = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_PART: Final = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def _parts(dotted: str) -> list[str]:
    return [p.strip("\"'") for p in _PART.findall(dotted)]


class KeyLines:
    """Line numbers (1-based) of the tables and keys of a TOML text, by dotted path
    (``listeners.1.port``; array-of-tables entries get their index). Values that span
    lines (arrays, multi-line strings) are skipped over, not looked into: a key inside
    an inline table is found at its parent's line."""

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        counters: dict[str, int] = {}
        table: list[str] = []
        depth = 0  # open brackets/braces of a value spanning lines
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            if depth > 0:
                depth += _depth_change(line)
                continue
            m = _TABLE.match(line)
            if m and not _KEY.match(line):
                parts = _parts(m.group(2))
                if m.group(1) == "[[":
                    base = ".".join(parts)
                    index = counters.get(base, -1) + 1
                    counters[base] = index
                    self.lines.setdefault(base, number)
                    parts = [*parts, str(index)]
                else:
                    parts = self._with_indexes(parts, counters)
                table = parts
                self.lines.setdefault(".".join(table), number)
                continue
            m = _KEY.match(line)
            if not m:
                continue
            path = ".".join([*table, *_parts(m.group(1))])
            self.lines.setdefault(path, number)
            rest = line[m.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_string = quote
            if in_string is None:
                depth = max(0, _depth_change(rest))

    @staticmethod
    def _with_indexes(parts: list[str], counters: Mapping[str, int]) -> list[str]:
        """``[listeners.tls]`` after ``[[listeners]]`` belongs to the last entry."""
        out: list[str] = []
        for part in parts:
            out.append(part)
            key = ".".join(out)
            if key in counters:
                out.append(str(counters[key]))
        return out

    def line_of(self, path: str) -> int | None:
        """The line of ``path``, else of its nearest enclosing key or table."""
        parts = path.split(".")
        while parts:
            found = self.lines.get(".".join(parts))
            if found is not None:
                return found
            parts.pop()
        return None


def _depth_change(text: str) -> int:
    """Net open brackets of ``text``, outside strings and comments."""
    depth = 0
    quote: str | None = None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return depth


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` most likely meant (a typo), if one is close enough."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that validates the value at ``loc`` under ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:
            current = _item_type(current)
            if current is None:
                return None
        current = _unwrap(current)
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """``X | None`` → X."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _item_type(tp: Any) -> Any:
    """What a tuple, list or dict holds (the step over an index or a key)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (tuple, list, set, frozenset) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return "another kind of value"


def _bound(value: object) -> str:
    return str(value)


def describe(error: ErrorDetails, model: type[BaseModel] | None) -> str:
    """One pydantic error in the admin's words (never the value itself: it may be a
    secret)."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    got = _kind(error.get("input"))
    loc = error["loc"]
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1]) if model is not None else None
        guess = nearest(str(loc[-1]), owner.model_fields) if owner is not None else None
        return "unknown key" + (f" (did you mean '{guess}'?)" if guess else "")
    if kind == "missing":
        return "required key is missing"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    if kind in ("string_type", "path_type"):
        return f"expected a string (in quotes), got {got}"
    if kind in ("tuple_type", "list_type", "set_type", "frozen_set_type"):
        return f"expected a list ([...]), got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        return f"expected a table, got {got}"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected', '?')}"
    if kind == "greater_than_equal":
        return f"must be at least {_bound(ctx.get('ge'))}"
    if kind == "greater_than":
        return f"must be more than {_bound(ctx.get('gt'))}"
    if kind == "less_than_equal":
        return f"must be at most {_bound(ctx.get('le'))}"
    if kind == "less_than":
        return f"must be less than {_bound(ctx.get('lt'))}"
    if kind == "string_too_long":
        return f"at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return f"at least {ctx.get('min_length')} characters"
    if kind == "too_long":
        return f"at most {ctx.get('max_length')} items"
    if kind == "too_short":
        return f"at least {ctx.get('min_length')} items"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "assertion_error":
        return str(error["msg"]).removeprefix("Assertion failed, ")
    # Anything else: pydantic's sentence, with its Python vocabulary softened.
    return str(error["msg"]).replace("Input should be", "expected").replace("Input", "value")


def problems(
    err: ValidationError, model: type[BaseModel] | None, prefix: str = ""
) -> list[tuple[str, str]]:
    """(key path, message) of each error of ``err``."""
    out = []
    for error in err.errors():
        loc = tuple(p for p in error["loc"] if not str(p).startswith("function-"))
        error = {**error, "loc": loc}
        path = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc) or "(top level)"
        out.append((path, describe(error, model)))
    return out


def strict_scalar(model: type[BaseModel], name: str, value: object) -> object:
    """Refuse what pydantic's lax mode would convert: ``"5"`` or ``5.0`` for a whole
    number, ``"true"`` or ``1`` for a boolean, ``"1.5"`` for a number. TOML has real
    numbers and booleans; a quoted one is a mistake worth reporting. Fields that parse
    strings on purpose (durations, sizes) are left alone."""
    field = model.model_fields.get(name)
    if field is None or any(
        type(m).__name__ in ("BeforeValidator", "PlainValidator", "WrapValidator")
        for m in field.metadata
    ):
        return value
    tp = _unwrap(field.annotation)
    if tp is bool and not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind(value)}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"expected a whole number, got {_kind(value)}")
    if tp is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"expected a number, got {_kind(value)}")
    return value
