"""XEP-0060 node configuration: the settings a PEP node has, read from and written to data
forms (``pubsub#node_config`` for create/configure, ``pubsub#publish-options``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Final

from modules.mod_pep.common import NS_NODE_CONFIG, NS_PUBLISH_OPTIONS
from xmppd.api import StanzaError, ns
from xmppd.api.stanza import Element, child, payload

ACCESS_MODELS: Final = ("presence", "open", "whitelist")
SEND_LAST: Final = ("never", "on_sub", "on_sub_and_presence")
_FIELD: Final = f"{{{ns.DATA_FORMS}}}field"
_VALUE: Final = f"{{{ns.DATA_FORMS}}}value"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A node's configuration (the XEP-0163 §5 defaults, except for the options)."""

    access_model: str = "presence"
    max_items: int | None = 1
    """``None``: "max", i.e. the ``max_items_limit`` option."""
    persist_items: bool = True
    send_last_published_item: str = "on_sub_and_presence"
    deliver_notifications: bool = True
    deliver_payloads: bool = True
    notify_retract: bool = True
    """Used when a retract has no 'notify' attribute."""
    notify_delete: bool = True
    title: str = ""

    def limit(self, max_items_limit: int) -> int:
        """How many items the node keeps."""
        return max_items_limit if self.max_items is None else min(self.max_items, max_items_limit)

    def extra_json(self) -> str:
        """The settings without a column of their own, as stored."""
        data = asdict(self)
        for column in _COLUMNS:
            del data[column]
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @staticmethod
    def from_row(
        access_model: str, max_items: int | None, persist: bool, send_last: str, extra: str
    ) -> NodeConfig:
        known = {f.name for f in fields(NodeConfig)}
        try:
            data = {k: v for k, v in json.loads(extra).items() if k in known}
        except ValueError:
            data = {}
        return NodeConfig(
            access_model=access_model,
            max_items=max_items,
            persist_items=bool(persist),
            send_last_published_item=send_last,
            **data,
        )


_COLUMNS: Final = ("access_model", "max_items", "persist_items", "send_last_published_item")


class UnknownField(Exception):
    """A form field this service does not support."""


def _boolean(value: str) -> bool:
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise ValueError(value)


def _choice(allowed: tuple[str, ...]) -> Any:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(value)
        return value

    return parse


_PARSERS: Final[dict[str, tuple[str, Any]]] = {
    "pubsub#access_model": ("access_model", _choice(ACCESS_MODELS)),
    "pubsub#max_items": ("max_items", None),  # depends on the limit: see parse_fields
    "pubsub#persist_items": ("persist_items", _boolean),
    "pubsub#send_last_published_item": ("send_last_published_item", _choice(SEND_LAST)),
    "pubsub#deliver_notifications": ("deliver_notifications", _boolean),
    "pubsub#deliver_payloads": ("deliver_payloads", _boolean),
    "pubsub#notify_retract": ("notify_retract", _boolean),
    "pubsub#notify_delete": ("notify_delete", _boolean),
    "pubsub#title": ("title", str),
}


def form_values(form: Element) -> tuple[str | None, dict[str, list[str]]]:
    """A data form's FORM_TYPE and its other fields (var -> values)."""
    form_type: str | None = None
    values: dict[str, list[str]] = {}
    for field in form.findall(_FIELD):
        var = field.get("var")
        if not var:
            continue
        texts = [(v.text or "").strip() for v in field.findall(_VALUE)]
        if var == "FORM_TYPE":
            form_type = texts[0] if texts else ""
        else:
            values[var] = texts
    return form_type, values


def _max_items(value: str, limit: int) -> int | None:
    if value == "max":
        return None
    number = int(value)
    if number < 1 or number > limit:
        raise ValueError(value)
    return number


def parse_fields(
    values: dict[str, list[str]], *, limit: int, ignore_unknown: bool
) -> dict[str, Any]:
    """Node settings from form fields, as ``NodeConfig`` attributes.

    Raises ``StanzaError('not-acceptable')`` for a bad value and :class:`UnknownField`
    for a field that is not supported (unless ``ignore_unknown``).
    """
    parsed: dict[str, Any] = {}
    for var, texts in values.items():
        spec = _PARSERS.get(var)
        if spec is None:
            if ignore_unknown:
                continue
            raise UnknownField(var)
        attr, parser = spec
        if len(texts) != 1:
            raise StanzaError("not-acceptable", f"{var} takes one value")
        try:
            parsed[attr] = _max_items(texts[0], limit) if parser is None else parser(texts[0])
        except ValueError:
            if attr == "max_items":
                raise StanzaError(
                    "not-acceptable", f"pubsub#max_items is 1 to {limit}, or 'max'"
                ) from None
            raise StanzaError("not-acceptable", f"invalid value for {var}") from None
    return parsed


def read_form(
    container: Element | None, expected_type: str, *, limit: int, ignore_unknown: bool
) -> dict[str, Any]:
    """The settings of the data form inside ``container`` (``<publish-options/>``,
    ``<configure/>``); an empty dict when there is none."""
    if container is None:
        return {}
    form = container.find(f"{{{ns.DATA_FORMS}}}x")
    if form is None:
        return {}
    if form.get("type", "submit") not in ("submit", "result"):
        raise StanzaError("bad-request", "the form must be submitted")
    form_type, values = form_values(form)
    if form_type is not None and form_type != expected_type:
        raise StanzaError("bad-request", f"FORM_TYPE must be {expected_type}")
    return parse_fields(values, limit=limit, ignore_unknown=ignore_unknown)


def publish_options(container: Element | None, *, limit: int) -> dict[str, Any]:
    """Preconditions of a publish (XEP-0060 §7.1.5); unknown fields raise UnknownField."""
    return read_form(container, NS_PUBLISH_OPTIONS, limit=limit, ignore_unknown=False)


def unmet(config: NodeConfig, wanted: dict[str, Any]) -> list[str]:
    """The preconditions ``config`` does not meet."""
    return [attr for attr, value in wanted.items() if getattr(config, attr) != value]


def apply(config: NodeConfig, changes: dict[str, Any]) -> NodeConfig:
    return replace(config, **changes) if changes else config


def _field(
    form: Element,
    var: str,
    kind: str,
    value: str,
    label: str,
    options: tuple[str, ...] = (),
) -> None:
    field = child(form, "field", {"var": var, "type": kind, "label": label})
    for option in options:
        opt = child(field, "option", {"label": option})
        child(opt, "value", text=option)
    child(field, "value", text=value)


def config_form(config: NodeConfig, *, form_type: str = "form") -> Element:
    """The ``pubsub#node_config`` data form showing ``config``."""
    form = payload(ns.DATA_FORMS, "x", {"type": form_type})
    form_type_field = child(form, "field", {"var": "FORM_TYPE", "type": "hidden"})
    child(form_type_field, "value", text=NS_NODE_CONFIG)
    _field(form, "pubsub#title", "text-single", config.title, "A friendly name for the node")
    _field(
        form,
        "pubsub#access_model",
        "list-single",
        config.access_model,
        "Who may retrieve items and receive notifications",
        ACCESS_MODELS,
    )
    _field(
        form,
        "pubsub#max_items",
        "text-single",
        "max" if config.max_items is None else str(config.max_items),
        "Most items to keep (or 'max')",
    )
    for attr, var, label in (
        ("persist_items", "pubsub#persist_items", "Keep items in storage"),
        ("deliver_notifications", "pubsub#deliver_notifications", "Send notifications"),
        ("deliver_payloads", "pubsub#deliver_payloads", "Send payloads with notifications"),
        ("notify_retract", "pubsub#notify_retract", "Notify when items are retracted"),
        ("notify_delete", "pubsub#notify_delete", "Notify when the node is deleted"),
    ):
        _field(form, var, "boolean", "1" if getattr(config, attr) else "0", label)
    _field(
        form,
        "pubsub#send_last_published_item",
        "list-single",
        config.send_last_published_item,
        "When to send the last published item",
        SEND_LAST,
    )
    return form
