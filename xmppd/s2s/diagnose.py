"""``xmppd check-federation DOMAIN``: what happens, step by step, when this server
tries to reach DOMAIN: DNS records, each address and port, STARTTLS or direct TLS,
the TLS version, the certificate's names and whether it validates (and why not), and
the authentication methods the remote offers. Each step is timed. It speaks to the
remote directly and needs no running server."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable

from xmppd.config import ServerConfig
from xmppd.s2s.certs import TrustStore
from xmppd.s2s.resolve import make_resolver, resolve
from xmppd.tls import certificate_paths, peer_chain, s2s_client_context

_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    "from='{frm}' to='{to}' version='1.0'>"
)


async def check_federation(config: ServerConfig, domain: str, say: Callable[[str], None]) -> bool:
    """Print each step with ``say``; ``True`` when some address gave a TLS stream whose
    certificate validates or where dialback is offered (federation can work)."""
    s2s = config.s2s
    start = time.monotonic()

    def step(text: str) -> None:
        say(f"[{time.monotonic() - start:6.2f}s] {text}")

    local = next(iter(config.hosts))
    policy = s2s.policy_for(domain)
    step(f"checking federation from {local} to {domain}; policy: {policy}")
    if not s2s.enabled:
        step("FAIL policy: federation is switched off ([s2s] enabled = false)")
        return False
    if policy == "deny":
        step(f"FAIL policy: federation with {domain} is denied ([s2s] deny, allow or policies)")
        return False
    res = await resolve(domain, make_resolver(s2s.resolver, s2s.dns_timeout), s2s.pins)
    for line in res.steps:
        step(f"DNS: {line}")
    if res.error is not None:
        step(f"FAIL {res.error}")
        if not s2s.pins.get(domain):
            step(
                f"hint: {domain} needs an SRV record _xmpp-server._tcp.{domain} (or "
                f"_xmpps-server._tcp for direct TLS) or an A/AAAA record for {domain} itself; "
                "check the spelling of the domain and the resolver ([s2s] resolver)"
            )
        return False
    trust = TrustStore(s2s.ca_file)
    section = config.hosts[local]
    cert, key = certificate_paths(
        local,
        section.certificate or config.tls.certificate,
        section.key or config.tls.key,
        config.server.data_dir,
    )
    ctx = s2s_client_context(cert, key) if cert.exists() else s2s_client_context_no_cert()
    ok = False
    for target in res.targets:
        mode = "direct TLS" if target.direct_tls else "STARTTLS"
        where = f"{target.host}:{target.port}"
        step(f"trying {where} ({mode}, from {target.name})")
        try:
            ok = await _try(
                target.host,
                target.port,
                target.direct_tls,
                ctx,
                local,
                domain,
                policy,
                trust,
                s2s.connect_timeout,
                step,
            )
        except ConnectionRefusedError:
            step(
                f"FAIL connect: {where} refused the connection: no server listens on that "
                "port (server down, wrong port in DNS or pins) or a firewall rejects it"
            )
        except TimeoutError:
            step(
                f"FAIL timeout: no answer from {where} within {s2s.connect_timeout:g}s "
                "(host down, or a firewall drops the packets)"
            )
        except ssl.SSLError as exc:
            step(f"FAIL tls: the TLS handshake with {where} failed: {exc.reason or exc}")
        except (OSError, ConnectionError) as exc:
            step(f"FAIL connect: {where}: {exc.__class__.__name__}: {exc}")
        if ok:
            break
    step("RESULT: " + ("federation can work" if ok else "cannot federate with " + domain))
    return ok


def s2s_client_context_no_cert() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_CONDITION = re.compile(rb"<stream:error[^>]*>\s*<([a-z-]+)")
_EXPLAIN = {
    "host-unknown": "the server at this address does not serve {domain}",
    "policy-violation": "the remote refuses us by its policy",
    "not-authorized": "the remote does not accept our authentication",
    "remote-connection-failed": "the remote could not connect back to us",
    "see-other-host": "the remote sends us to another host",
}


def _stream_error(data: bytes, domain: str, step: Callable[[str], None]) -> None:
    found = _CONDITION.search(data)
    condition = found.group(1).decode() if found else "unknown"
    why = _EXPLAIN.get(condition, "").format(domain=domain)
    step(f"FAIL stream error: {condition}" + (f" ({why})" if why else ""))


async def _read_until(reader: asyncio.StreamReader, pattern: bytes, timeout: float) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while not re.search(pattern, data, re.S):
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError(f"the remote closed the connection ({data[-300:]!r})")
            data += chunk
    return data


async def _try(
    host: str,
    port: int,
    direct: bool,
    ctx: ssl.SSLContext,
    local: str,
    domain: str,
    policy: str,
    trust: TrustStore,
    timeout: float,
    step: Callable[[str], None],
) -> bool:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx if direct else None, server_hostname=domain if direct else None
        )
    try:
        step("connected" + (" (TLS)" if direct else ""))
        header = _HEADER.format(frm=local, to=domain).encode()
        writer.write(header)
        features = await _read_until(reader, rb"</stream:features>|<stream:error", timeout)
        if b"<stream:error" in features:
            _stream_error(features, domain, step)
            return False
        if not direct:
            if b"starttls" not in features:
                step("FAIL tls: the remote does not offer STARTTLS")
                return False
            writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            await _read_until(reader, rb"<proceed", timeout)
            await writer.start_tls(ctx, server_hostname=domain)
            writer.write(header)
            features = await _read_until(reader, rb"</stream:features>", timeout)
        sslobj = writer.get_extra_info("ssl_object")
        step(f"TLS: {sslobj.version()} {sslobj.cipher()[0]}")
        check = trust.check(peer_chain(sslobj), domain)
        step(f"certificate names: {', '.join(check.names.all()) or 'none'}")
        step(f"certificate: {'valid' if check.valid else 'NOT valid: ' + check.why()}")
        external = b"EXTERNAL" in features
        dialback = b"urn:xmpp:features:dialback" in features
        step(
            "authentication offered: "
            + (
                ", ".join(
                    n for n, on in (("SASL EXTERNAL", external), ("dialback", dialback)) if on
                )
                or "none"
            )
        )
        if check.valid and external:
            step("would authenticate with SASL EXTERNAL (if the remote accepts our certificate)")
            return True
        if policy == "certificates":
            if not check.valid:
                step(
                    f"FAIL certificate: the policy for {domain} requires a valid certificate "
                    f"and {check.why()}"
                )
            else:
                step(
                    "FAIL auth: the remote does not offer SASL EXTERNAL (it does not accept "
                    f"our certificate) and the policy for {domain} does not allow dialback"
                )
            return False
        if dialback or b"jabber:server:dialback" in features:
            if not check.valid:
                step("the certificate does not validate, but the policy allows dialback")
            step("would authenticate with dialback (the remote calls back to verify our key)")
            return True
        step("FAIL auth: no usable authentication method")
        return False
    finally:
        writer.close()
