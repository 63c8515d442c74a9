"""Reload without restart: SIGHUP (or ``xmppd reload``) makes a running server read its
certificates and configuration again. A renewed certificate is presented on the next
TLS handshake, a reloadable module option (mod_motd's text) is in effect for the next
session, sessions already open go on untouched, and changes that need a restart are
named in the log."""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
from pathlib import Path

from tests.support.clients import register_account
from tests.support.e2e import PASSWORD
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import Element, XmlClient, tag
from xmppd.tls import generate_self_signed

MOTD_BEFORE = 'motd = {text = "Before the reload"}'
MOTD_AFTER = 'motd = {text = "After the reload"}'


def presented_certificate(server: XmppdServer) -> bytes:
    """The DER certificate the direct-TLS port presents to a new connection (SNI
    localhost), read without validating it."""
    import socket

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", server.direct_tls_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server.domain) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def file_certificate(server: XmppdServer) -> bytes:
    return ssl.PEM_cert_to_DER_cert(server.cafile.read_text())


async def wait_for_log(server: XmppdServer, text: str, count: int = 1) -> str:
    deadline = time.monotonic() + 20
    while server.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"not logged: {text!r}\n{server.log_text()[-3000:]}"
        await asyncio.sleep(0.05)
    return server.log_text()


def headline(el: Element) -> bool:
    return el.tag == tag("message") and el.get("type") == "headline"


async def test_sighup_renews_the_certificate_and_options_keeping_sessions(tmp_path: Path) -> None:
    modules = {**DEFAULT_TEST_MODULES, "motd": {"text": "Before the reload"}}
    with running_server(tmp_path, modules=modules) as server:
        assert MOTD_BEFORE in server.config_path.read_text()
        old_der = presented_certificate(server)
        assert old_der == file_certificate(server)
        await register_account(server, "alice", PASSWORD)
        await register_account(server, "bob", PASSWORD)
        alice = await XmlClient.login(server, "alice@localhost", PASSWORD, resource="old")
        try:
            alice.send("<presence/>")
            greeting = await alice.expect(headline)
            assert greeting.findtext(tag("body")) == "Before the reload"

            # A renewal: new certificate and key in place of the old; a new option.
            certs = server.data_dir / "certs"
            generate_self_signed("localhost", certs / "localhost.crt", certs / "localhost.key")
            new_der = file_certificate(server)
            assert new_der != old_der
            text = server.config_path.read_text()
            server.config_path.write_text(
                text.replace(MOTD_BEFORE, MOTD_AFTER)
                .replace('log_level = "debug"', 'log_level = "info"')
                .replace("failures_before_delay = 1000", "failures_before_delay = 999")
                + "[c2s]\nmax_unacked = 77\n"
            )
            server.process.send_signal(signal.SIGHUP)
            log = await wait_for_log(server, "reload done")

            assert presented_certificate(server) == new_der
            # STARTTLS too: the client trusts only the new certificate (cafile).
            bob = await XmlClient.login(server, "bob@localhost", PASSWORD, resource="new")
            try:
                bob.send("<presence/>")
                greeting = await bob.expect(headline)
                assert greeting.findtext(tag("body")) == "After the reload"
                # The session opened before the reload goes on, on its old connection.
                assert alice.is_connected
                bob.send(
                    "<message to='alice@localhost/old' type='chat'><body>still there?</body></message>"
                )
                got = await alice.expect(lambda el: el.findtext(tag("body")) == "still there?")
                assert got.get("from") == "bob@localhost/new"
                pong = await alice.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to="localhost")
                assert pong.get("type") == "result"
                assert not alice.pending(headline)  # not greeted a second time
            finally:
                await bob.close()
        finally:
            await alice.close()
        assert "reload: localhost: new certificate" in log
        assert "modules.motd (localhost)" in log and "server.log_level" in log
        assert "auth.failures_before_delay" in log.split("reload done")[-1].splitlines()[0]
        assert "need a restart to take effect: c2s.max_unacked" in log
        assert "Before the reload" not in log.split("reload done")[-1]


async def test_xmppd_reload_signals_the_server_and_a_bad_file_changes_nothing(
    tmp_path: Path,
) -> None:
    modules = {**DEFAULT_TEST_MODULES, "motd": {"text": "Before the reload"}}
    with running_server(tmp_path, modules=modules) as server:
        good = server.config_path.read_text()
        server.config_path.write_text(good.replace(MOTD_BEFORE, 'motd = {text = 5, subjet = "x"}'))
        done = server.cli("reload")
        assert done.returncode == 0, done.stderr
        assert f"pid {server.process.pid}" in done.stdout
        log = await wait_for_log(server, "reload refused")
        assert "modules.motd.text: expected a string" in log
        assert "modules.motd.subjet: unknown key (did you mean 'subject'?)" in log
        await register_account(server, "carol", PASSWORD)
        carol = await XmlClient.login(server, "carol@localhost", PASSWORD)
        try:
            carol.send("<presence/>")
            greeting = await carol.expect(headline)
            assert greeting.findtext(tag("body")) == "Before the reload"
        finally:
            await carol.close()

        # A module that does not reload: its change is named as needing a restart.
        server.config_path.write_text(good.replace("ping = {}", 'ping = {idle_interval = "1m"}'))
        assert server.cli("reload").returncode == 0
        log = await wait_for_log(server, "reload done")
        assert "modules.ping (the module does not reload)" in log
    # Stopped: the pid file is gone, and reload says so.
    again = server.cli("reload")
    assert again.returncode == 1 and "no running xmppd" in again.stderr


def test_a_reload_after_run_loopback_asks_for_no_restart(tmp_path: Path) -> None:
    """``xmppd run --loopback`` binds every listener to 127.0.0.1 whatever the file
    says; a reload reads the file again and must not take those addresses for a change
    that needs a restart."""
    import subprocess
    import sys

    from tests.support.server import _stop, _wait_listening, free_port, write_config

    config = tmp_path / "xmppd.toml"
    p1, p2 = free_port(), free_port()
    write_config(
        config,
        data_dir=tmp_path / "data",
        storage_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}",
        starttls_port=p1,
        direct_tls_port=p2,
        modules=DEFAULT_TEST_MODULES,
    )
    config.write_text(config.read_text().replace('address = "127.0.0.1"', 'address = "0.0.0.0"'))
    log_path = tmp_path / "xmppd.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xmppd", "--config", str(config), "run", "--loopback"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_listening(proc, (p1, p2), log_path)
        deadline = time.monotonic() + 20
        while " serving " not in log_path.read_text():  # SIGHUP is handled from then on
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        while "reload done" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        text = log_path.read_text()
        assert "need a restart" not in text, text[-3000:]
        # Still on loopback only, after the reload as before.
        assert "listening on loopback (127.0.0.1) only" in text
    finally:
        _stop(proc)
