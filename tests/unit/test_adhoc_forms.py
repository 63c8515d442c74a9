"""XEP-0004 forms as ad-hoc commands read and write them (xmppd.adhoc)."""

from __future__ import annotations

import pytest
from lxml import etree

from xmppd.adhoc import MAX_FIELDS, MAX_VALUE_CHARS, FormField, data_form, read_form
from xmppd.errors import StanzaError

XDATA = "jabber:x:data"


def submitted(*fields: tuple[str, list[str]]) -> etree._Element:
    x = etree.Element(f"{{{XDATA}}}x", {"type": "submit"}, nsmap={None: XDATA})  # type: ignore[dict-item]
    for var, values in fields:
        f = etree.SubElement(x, f"{{{XDATA}}}field", {"var": var})
        for value in values:
            etree.SubElement(f, f"{{{XDATA}}}value").text = value
    return x


def test_form_has_form_type_first_and_every_field() -> None:
    x = data_form(
        "form",
        [FormField("jids", "jid-multi", "Who", True, values=("a@b", "c@d"))],
        title="T",
        form_type="urn:example",
    )
    fields = x.findall(f"{{{XDATA}}}field")
    assert [f.get("var") for f in fields] == ["FORM_TYPE", "jids"]
    assert fields[0].get("type") == "hidden"
    assert fields[1].find(f"{{{XDATA}}}required") is not None
    assert [v.text for v in fields[1].findall(f"{{{XDATA}}}value")] == ["a@b", "c@d"]
    assert x.findtext(f"{{{XDATA}}}title") == "T"


def test_read_form_returns_values_by_var() -> None:
    x = submitted(("a", ["1"]), ("b", ["x", "y"]), ("", ["ignored"]))
    assert read_form(x) == {"a": ("1",), "b": ("x", "y")}


@pytest.mark.parametrize(
    "x",
    [
        None,
        etree.Element(f"{{{XDATA}}}x", {"type": "form"}),
        submitted(*((f"f{i}", ["v"]) for i in range(MAX_FIELDS + 1))),
        submitted(("big", ["x" * (MAX_VALUE_CHARS + 1)])),
    ],
    ids=["missing", "not-submit", "too-many-fields", "value-too-long"],
)
def test_read_form_refuses(x: etree._Element | None) -> None:
    with pytest.raises(StanzaError) as err:
        read_form(x)
    assert err.value.condition in ("bad-request", "policy-violation")
