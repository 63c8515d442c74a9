"""mod_webclient's pure parts: option checks, the asset path guard, URLs and escaping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from xmppd_modules.mod_webclient import (
    Install,
    WebClientOptions,
    _json_for_html,
    asset_file,
    connection_url,
    content_security_policy,
    find_install,
)


@pytest.mark.parametrize("path", ["/", "chat", "/chat/", "/a b", "/chat?x", "/../x", ""])
def test_a_bad_path_is_refused(path: str) -> None:
    with pytest.raises(ValidationError):
        WebClientOptions(path=path)


@pytest.mark.parametrize("name", ["Bad", "with-dash", "", "x" * 65])
def test_a_bad_setting_name_is_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        WebClientOptions(settings={name: True})


def test_defaults() -> None:
    opts = WebClientOptions()
    assert (opts.path, opts.connection, opts.view_mode) == ("/chat", "websocket", "fullscreen")
    assert opts.settings == {} and not opts.lock_domain


def test_settings_keep_their_types() -> None:
    opts = WebClientOptions(settings={"a": True, "b": 3, "c": "x", "d": ["e"]})
    assert opts.settings == {"a": True, "b": 3, "c": "x", "d": ["e"]}


def _package(tmp_path: Path, version: str = "1.2.3") -> Path:
    package = tmp_path / "converse.js"
    (package / "dist" / "sub").mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"version": version}))
    (package / "dist" / "converse.min.js").write_text("//")
    (package / "dist" / "sub" / "a.css").write_text("")
    (package / "dist" / ".secret").write_text("")
    (tmp_path / "outside.txt").write_text("")
    (package / "dist" / "link").symlink_to(tmp_path / "outside.txt")
    return package


def test_find_install(tmp_path: Path) -> None:
    assert find_install(tmp_path / "missing") is None
    install = find_install(_package(tmp_path))
    assert install == Install((tmp_path / "converse.js" / "dist").resolve(), "1.2.3")


def test_a_version_unfit_for_a_url_is_not_an_install(tmp_path: Path) -> None:
    assert find_install(_package(tmp_path, version="../1")) is None


def test_only_files_inside_dist_are_assets(tmp_path: Path) -> None:
    install = find_install(_package(tmp_path))
    assert install is not None
    assert asset_file(install, "converse.min.js") == install.dist / "converse.min.js"
    assert asset_file(install, "sub/a.css") == install.dist / "sub" / "a.css"
    for rest in ["../package.json", "sub/../../package.json", ".secret", "sub", "sub/",
                 "/etc/passwd", "link", "x" * 600, "", "sub//a.css"]:  # fmt: skip
        assert asset_file(install, rest) is None, rest


def test_connection_urls_follow_the_public_scheme() -> None:
    assert connection_url("https://c.example", "websocket") == "wss://c.example/xmpp-websocket"
    assert connection_url("http://127.0.0.1:5280", "websocket") == (
        "ws://127.0.0.1:5280/xmpp-websocket"
    )
    assert connection_url("https://c.example", "bosh") == "https://c.example/http-bind"


def test_a_strange_host_does_not_reach_the_csp() -> None:
    assert "wss://c.example:443" in content_security_policy("wss://c.example:443/xmpp-websocket")
    csp = content_security_policy("ws://evil;script-src *@x/xmpp-websocket")
    assert "script-src *" not in csp and "evil" not in csp


def test_json_for_html_cannot_close_the_script() -> None:
    text = _json_for_html({"a": "</script><!--&"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><!--&"}
