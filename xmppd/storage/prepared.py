"""Reads on a login's path, run on SQLite without SQLAlchemy's work per call.

Through SQLAlchemy Core, a point query on SQLite costs several times what SQLite
spends on it: the compiled-statement cache lookup, the bind parameters built again,
an execution context, a result object and its row objects. Profiled over 10,000 TLS
logins, the two reads of every login (the SCRAM credentials, the roster) were about a
tenth of the server's CPU, SQLite itself a small part of that.

A statement built once (at import, with ``bindparam`` placeholders) and marked with
:func:`prepared` is compiled once per database by :class:`SqlitePlans` to its SQL text,
the order of its ``?`` parameters, its constant parameters with SQLAlchemy's own bind
processors already applied, and the result processors of its columns; running it is
then one ``sqlite3`` ``execute`` and ``fetchall``. Rows are named tuples with the
statement's column names, so callers read ``row.name`` and ``row[0]`` as with
SQLAlchemy's rows. On PostgreSQL, and for a statement this cannot compile so (one
with expanding ``IN`` parameters, or column names that are not identifiers),
SQLAlchemy runs it as before.
"""

from __future__ import annotations

import keyword
import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

OPTION: Final = "xmppd_prepared"
_MAX_PLANS: Final = 1024

S = TypeVar("S", bound=sa.Select[Any] | sa.CompoundSelect[Any])

_Processor = Callable[[Any], Any] | None


def prepared(stmt: S) -> S:
    """``stmt``, marked as built once and run often (see the module's docstring)."""
    return cast("S", stmt.execution_options(**{OPTION: True}))


@dataclass(frozen=True, slots=True)
class Plan:
    """One statement, compiled for SQLite's driver."""

    sql: str
    names: tuple[str, ...]
    """The bind parameter of each ``?``, in order."""
    constants: Mapping[str, Any]
    """Values of the parameters the statement carries itself, processed."""
    bind_processors: Mapping[str, Callable[[Any], Any]]
    """Processors of the parameters the caller gives (only those that have one)."""
    result_processors: tuple[_Processor, ...] | None
    """Per column; ``None`` when no column has one."""
    row: Callable[[Sequence[Any]], Any]

    def parameters(self, params: Mapping[str, Any] | None) -> tuple[Any, ...]:
        given = params or {}
        processors = self.bind_processors
        values = []
        for name in self.names:
            if name in given:
                value = given[name]
                processor = processors.get(name)
                values.append(value if processor is None else processor(value))
            else:
                values.append(self.constants[name])
        return tuple(values)

    def rows(self, found: list[Any]) -> list[Any]:
        make, processors = self.row, self.result_processors
        if processors is None:
            return [make(raw) for raw in found]
        return [
            make([v if p is None else p(v) for p, v in zip(processors, raw, strict=True)])
            for raw in found
        ]


class SqlitePlans:
    """The plans of the marked statements run on one SQLite database, and the
    driver's connection they run on (the event loop's, as SQLAlchemy's)."""

    def __init__(self, dialect: Dialect, connection: Callable[[], sqlite3.Connection]) -> None:
        self._dialect = dialect
        self._connect = connection
        self._connection: sqlite3.Connection | None = None
        self._plans: dict[object, Plan | None] = {}

    def plan(self, stmt: sa.Executable) -> Plan | None:
        """The plan of a marked statement; ``None`` for others (SQLAlchemy runs them)."""
        if not stmt.get_execution_options().get(OPTION):
            return None
        if stmt in self._plans:
            return self._plans[stmt]
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()  # statements marked but built per call: start again
        plan = self._plans[stmt] = _compile(stmt, self._dialect)
        return plan

    def fetch(self, plan: Plan, params: Mapping[str, Any] | None) -> list[Any]:
        connection = self._connection
        if connection is None:
            connection = self._connection = self._connect()
        return plan.rows(connection.execute(plan.sql, plan.parameters(params)).fetchall())


def _compile(stmt: sa.Executable, dialect: Dialect) -> Plan | None:
    if not isinstance(stmt, sa.Select | sa.CompoundSelect):
        return None
    compiled = stmt.compile(dialect=dialect)
    sql = compiled.string
    names = compiled.positiontup
    if names is None or "POSTCOMPILE" in sql:
        return None
    columns = list(stmt.selected_columns)
    keys = list(stmt.selected_columns.keys())
    if len(set(keys)) != len(keys) or not all(
        k.isidentifier() and not keyword.iskeyword(k) and not k.startswith("_") for k in keys
    ):
        return None
    constants: dict[str, Any] = {}
    processors: dict[str, Callable[[Any], Any]] = {}
    for name in set(names):
        bind = compiled.binds[name]
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
        if bind.value is not None or not bind.required:
            value = bind.effective_value
            constants[name] = value if processor is None else processor(value)
    results = tuple(
        col.type.dialect_impl(dialect).result_processor(dialect, None) for col in columns
    )
    row_type = namedtuple("Row", keys)  # type: ignore[misc]
    return Plan(
        sql=sql,
        names=tuple(names),
        constants=constants,
        bind_processors=processors,
        result_processors=results if any(p is not None for p in results) else None,
        row=row_type._make,
    )
