"""XEP-0060 node configuration: the settings a node has, read from and written to data
forms (``pubsub#node_config`` for create/configure, ``pubsub#publish-options``), and the
subscription options (``pubsub#subscribe_options``).

PEP and the PubSub service support different access models; each passes its own
:class:`FormRules`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Final

from xmppd.api import ns
from xmppd.api.stanza import Element, child, payload
from xmppd_modules.pubsub_common.common import (
    NS_NODE_CONFIG,
    NS_PUBLISH_OPTIONS,
    NS_SUBSCRIBE_OPTIONS,
)
from xmppd_modules.pubsub_common.errors import BAD_REQUEST, INVALID_OPTIONS, NOT_ACCEPTABLE

SEND_LAST: Final = ("never", "on_sub", "on_sub_and_presence")
_FIELD: Final = f"{{{ns.DATA_FORMS}}}field"
_VALUE: Final = f"{{{ns.DATA_FORMS}}}value"


@dataclass(frozen=True, slots=True)
class FormRules:
    """What a service accepts in configuration forms."""

    limit: int
    """Most items a node may keep (``pubsub#max_items`` = "max" means this many)."""
    access_models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A node's configuration (the XEP-0163 §5 defaults; services pass their own)."""

    access_model: str = "presence"
    max_items: int | None = 1
    """``None``: "max", i.e. the service's limit."""
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


MAX_TITLE: Final = 1024
"""Longest node title, in characters: titles are kept with the node (in memory while it
is cached) and sent in every disco#info and configuration form."""


def _title(value: str) -> str:
    if len(value) > MAX_TITLE:
        raise ValueError(value)
    return value


_PARSERS: Final[dict[str, tuple[str, Any]]] = {
    "pubsub#access_model": ("access_model", None),  # depends on the service: parse_fields
    "pubsub#max_items": ("max_items", None),  # depends on the limit: see parse_fields
    "pubsub#persist_items": ("persist_items", _boolean),
    "pubsub#send_last_published_item": ("send_last_published_item", _choice(SEND_LAST)),
    "pubsub#deliver_notifications": ("deliver_notifications", _boolean),
    "pubsub#deliver_payloads": ("deliver_payloads", _boolean),
    "pubsub#notify_retract": ("notify_retract", _boolean),
    "pubsub#notify_delete": ("notify_delete", _boolean),
    "pubsub#title": ("title", _title),
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
    values: dict[str, list[str]], rules: FormRules, *, ignore_unknown: bool
) -> dict[str, Any]:
    """Node settings from form fields, as ``NodeConfig`` attributes.

    Raises ``not-acceptable`` for a bad value and :class:`UnknownField` for a field that
    is not supported (unless ``ignore_unknown``).
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
            raise NOT_ACCEPTABLE(f"{var} takes one value")
        try:
            if attr == "max_items":
                parsed[attr] = _max_items(texts[0], rules.limit)
            elif attr == "access_model":
                parsed[attr] = _choice(rules.access_models)(texts[0])
            else:
                parsed[attr] = parser(texts[0])
        except ValueError:
            if attr == "max_items":
                raise NOT_ACCEPTABLE(f"pubsub#max_items is 1 to {rules.limit}, or 'max'") from None
            raise NOT_ACCEPTABLE(f"invalid value for {var}") from None
    return parsed


def submitted_form(container: Element | None, expected_type: str) -> dict[str, list[str]] | None:
    """The fields of the submitted data form inside ``container`` (``<configure/>``,
    ``<publish-options/>``, ``<options/>``); ``None`` when there is none."""
    if container is None:
        return None
    form = container.find(f"{{{ns.DATA_FORMS}}}x")
    if form is None:
        return None
    if form.get("type", "submit") not in ("submit", "result"):
        raise BAD_REQUEST("the form must be submitted")
    form_type, values = form_values(form)
    if form_type is not None and form_type != expected_type:
        raise BAD_REQUEST(f"FORM_TYPE must be {expected_type}")
    return values


def read_form(
    container: Element | None, expected_type: str, rules: FormRules, *, ignore_unknown: bool
) -> dict[str, Any]:
    """The node settings of the data form inside ``container``; empty when none."""
    values = submitted_form(container, expected_type)
    if values is None:
        return {}
    return parse_fields(values, rules, ignore_unknown=ignore_unknown)


def publish_options(container: Element | None, rules: FormRules) -> dict[str, Any]:
    """Preconditions of a publish (XEP-0060 §7.1.5); unknown fields raise UnknownField."""
    return read_form(container, NS_PUBLISH_OPTIONS, rules, ignore_unknown=False)


def node_config(container: Element | None, rules: FormRules) -> dict[str, Any]:
    """The settings of a ``pubsub#node_config`` form (fields not supported are ignored,
    as XEP-0004 lets a service do with what it does not know)."""
    return read_form(container, NS_NODE_CONFIG, rules, ignore_unknown=True)


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


def _form(form_type_value: str, form_type: str) -> Element:
    form = payload(ns.DATA_FORMS, "x", {"type": form_type})
    form_type_field = child(form, "field", {"var": "FORM_TYPE", "type": "hidden"})
    child(form_type_field, "value", text=form_type_value)
    return form


def config_form(config: NodeConfig, rules: FormRules, *, form_type: str = "form") -> Element:
    """The ``pubsub#node_config`` data form showing ``config``."""
    form = _form(NS_NODE_CONFIG, form_type)
    _field(form, "pubsub#title", "text-single", config.title, "A friendly name for the node")
    _field(
        form,
        "pubsub#access_model",
        "list-single",
        config.access_model,
        "Who may retrieve items and receive notifications",
        rules.access_models,
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


# ----------------------------------------------------------------------------- subscriptions


@dataclass(frozen=True, slots=True)
class SubscriptionOptions:
    """A subscription's options (XEP-0060 §6.3): only ``pubsub#deliver`` so far."""

    deliver: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> SubscriptionOptions:
        known = {f.name for f in fields(SubscriptionOptions)}
        try:
            data = {k: v for k, v in json.loads(text).items() if k in known}
        except ValueError:
            data = {}
        return SubscriptionOptions(**data)


def subscription_options(container: Element | None) -> dict[str, Any]:
    """The options of a submitted ``pubsub#subscribe_options`` form (empty when none);
    a field that is not supported or a bad value gives ``bad-request`` +
    ``<invalid-options/>`` (XEP-0060 §6.3.7)."""
    values = submitted_form(container, NS_SUBSCRIBE_OPTIONS)
    if values is None:
        return {}
    parsed: dict[str, Any] = {}
    for var, texts in values.items():
        if var != "pubsub#deliver" or len(texts) != 1:
            raise INVALID_OPTIONS(f"unsupported subscription option {var}")
        try:
            parsed["deliver"] = _boolean(texts[0])
        except ValueError:
            raise INVALID_OPTIONS("pubsub#deliver is a boolean") from None
    return parsed


def options_form(options: SubscriptionOptions, *, form_type: str = "form") -> Element:
    """The ``pubsub#subscribe_options`` data form showing ``options``."""
    form = _form(NS_SUBSCRIBE_OPTIONS, form_type)
    value = "1" if options.deliver else "0"
    _field(form, "pubsub#deliver", "boolean", value, "Enable delivery?")
    return form
