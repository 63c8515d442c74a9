"""The ``xmppd`` command: run the server and manage accounts without a client."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from xmppd import __version__, gcpolicy
from xmppd.auth.accounts import AccountExists, NoSuchAccount
from xmppd.auth.passwords import password_problem
from xmppd.config import ConfigError, ServerConfig, load_config
from xmppd.jid import JID, InvalidJID
from xmppd.logsetup import configure as configure_logging
from xmppd.storage.migrate import SchemaOutOfDate

log = logging.getLogger("xmppd")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xmppd", description="An XMPP server.")
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path(os.environ["XMPPD_CONFIG"]) if os.environ.get("XMPPD_CONFIG") else None,
        help="TOML configuration file (default: $XMPPD_CONFIG, else built-in defaults: "
        "host localhost, data in ./data)",
    )
    # --config is accepted before or after the command (``xmppd run --config x.toml``).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    run = command("run", "run the server in the foreground")
    run.add_argument(
        "--loopback",
        action="store_true",
        help="bind every listener to 127.0.0.1 whatever the configuration says "
        "(what ./dev run does unless given --public)",
    )
    # Internal: how the supervisor of ``server.workers`` starts worker N (xmppd.workers).
    run.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    command(
        "reload",
        "make the running server re-read its configuration and certificates (SIGHUP)",
    )
    command("check-config", "validate the configuration and exit")
    chk = command(
        "check",
        "check the config, the certificates of every host and component and the DNS "
        "records to publish (prints the ones to add)",
    )
    chk.add_argument(
        "--target",
        help="public host name of this machine, the SRV records' target (default: each "
        "domain itself)",
    )
    fed = command("check-federation", "explain, step by step, how this server reaches DOMAIN")
    fed.add_argument("domain")
    command("version", "print the version")
    add = command("adduser", "create an account")
    add.add_argument("jid")
    add.add_argument("--password", help="password (default: prompt, or stdin when not a tty)")
    dele = command("deluser", "delete an account and all its data")
    dele.add_argument("jid")
    pw = command("passwd", "change an account's password")
    pw.add_argument("jid")
    pw.add_argument("--password")
    users = command("users", "list the accounts of a host (default: every host)")
    users.add_argument("host", nargs="?")
    imp = command("import-users", "create accounts from a file of 'jid password' lines")
    imp.add_argument("file", type=Path)
    exp = command("export-user", "write an account's data as XEP-0227 XML")
    exp.add_argument("jid")
    exp.add_argument("--output", "-o", type=Path, help="file to write (default: stdout)")
    bundle = command(
        "export", "write everything stored about an account (XML and files) as a .tar.gz"
    )
    bundle.add_argument("jid")
    bundle.add_argument(
        "--output", "-o", type=Path, help="file to write (default: ./USER@HOST.tar.gz)"
    )
    erase = command("erase", "erase an account's data, now or after a grace period (GDPR)")
    erase.add_argument("jid")
    erase.add_argument(
        "--grace",
        default="0",
        help="days to wait before the data is deleted (the account is disabled at once); "
        "a number of days, or a duration such as '12h' (default: 0, erase now)",
    )
    erase.add_argument(
        "--cancel",
        action="store_true",
        help="cancel a pending erasure (set a password again with 'passwd' to enable the account)",
    )
    token = command("token", "manage the bearer tokens of the admin REST API")
    tsub = token.add_subparsers(dest="token_command", required=True)
    tcreate = tsub.add_parser("create", help="create a token (printed once)")
    tcreate.add_argument("name", help="what the token is for")
    tcreate.add_argument(
        "--scope", choices=("read-only", "users", "rooms", "admin"), default="read-only"
    )
    tsub.add_parser("list", help="list the tokens (never their secrets)")
    trevoke = tsub.add_parser("revoke", help="revoke a token by its id")
    trevoke.add_argument("token_id")
    cluster = command("cluster", "the cluster this configuration belongs to ([cluster])")
    csub = cluster.add_subparsers(dest="cluster_command", required=True)
    cstatus = csub.add_parser(
        "status", help="nodes, sessions per node and heartbeat age, read from Redis"
    )
    cstatus.add_argument("--json", action="store_true", help="print JSON instead of a table")
    db = command("db", "the database schema (migrations)")
    dsub = db.add_subparsers(dest="db_command", required=True)
    dsub.add_parser("upgrade", help="upgrade the schema to this release's (back up first)")
    dsub.add_parser("current", help="print the schema revision and whether it is current")
    docs = command("gen-docs", "regenerate docs/hooks.md and docs/modules/ from the code")
    docs.add_argument("--check", action="store_true", help="only report stale files")
    docs.add_argument("--docs-dir", type=Path, default=Path("docs"))
    return p


def _read_password(given: str | None) -> str:
    if given is not None:
        return given
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise SystemExit("passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def _jid(text: str, config: ServerConfig) -> JID:
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise SystemExit(f"invalid JID {text!r}: {exc}") from None
    if not jid.local or jid.resource:
        raise SystemExit(f"expected an account JID (user@host), got {text!r}") from None
    if jid.domain not in config.hosts:
        raise SystemExit(f"{jid.domain} is not a host of this server ({', '.join(config.hosts)})")
    return jid


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"xmppd {__version__}")
        return 0
    if args.command == "gen-docs":
        from xmppd.docgen import write

        stale = write(args.docs_dir, check=args.check)
        for path in stale:
            print(f"{'stale' if args.check else 'wrote'}: {path}")
        return 1 if args.check and stale else 0
    if args.command == "check-config":
        logging.basicConfig(level=logging.WARNING)
        from xmppd.configcheck import check_file

        found = check_file(args.config)
        if found:
            print("configuration error:\n" + "\n".join(found), file=sys.stderr)
            return 2
        print("configuration OK")
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    worker = getattr(args, "worker", None)
    process = None
    if args.command == "run" and config.worker_count > 1:
        process = "supervisor" if worker is None else f"w{worker}"
    configure_logging(config.server, command=args.command, process=process)
    # Alembic narrates every step at INFO; xmppd logs the upgrade itself.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))
    if args.command == "check":
        import asyncio

        from xmppd.deploycheck import check_deployment
        from xmppd.server import Server

        try:
            Server(config).check()
        except ConfigError as exc:
            print(f"FAIL configuration:\n{exc}")
            return 2
        print(f"OK   configuration {config.source or '(built-in defaults)'}")
        report = asyncio.run(check_deployment(config, print, target=args.target))
        return 1 if report.failures else 0
    if args.command == "check-federation":
        import asyncio

        from xmppd.s2s.diagnose import check_federation

        ok = asyncio.run(check_federation(config, args.domain.lower(), print))
        return 0 if ok else 1
    if args.command == "run":
        if args.loopback:
            config = _loopback_only(config)
        if args.worker is not None:
            return _run(config, loopback=args.loopback, worker=args.worker)
        if config.worker_count > 1:
            return _supervise(config, loopback=args.loopback)
        return _run(config, loopback=args.loopback)
    if args.command == "reload":
        from xmppd.pidfile import signal_running

        return signal_running(config.server.data_dir, signal.SIGHUP, "reload")
    if args.command == "cluster":
        from xmppd.cluster.status import status_command

        return status_command(config, as_json=args.json)
    if args.command == "db":
        from xmppd.dbcli import db_command

        return db_command(config, args.db_command)
    cmd = args.command
    if cmd in ("adduser", "passwd"):
        jid = _jid(args.jid, config)
        password = _read_password(args.password)
        problem = password_problem(password, config.accounts.min_password_length)
        if problem is not None:
            print(f"refused: {problem}", file=sys.stderr)
            return 1
        if cmd == "adduser":
            live = _live(config, "POST", "/users", {"jid": str(jid), "password": password})
            if live is not None:
                return _report(live, f"created {jid}", {409: f"{jid} already exists"})
            return _with_server(config, lambda s: _adduser(s, jid, password), listen=False)
        live = _live(config, "PUT", f"/users/{_q(jid)}/password", {"password": password})
        if live is not None:
            return _report(live, f"password of {jid} changed", {404: f"{jid} does not exist"})
        return _with_server(config, lambda s: _passwd(s, jid, password), listen=False)
    if cmd == "deluser":
        jid = _jid(args.jid, config)
        live = _live(config, "DELETE", f"/users/{_q(jid)}")
        if live is not None:
            return _report(live, f"deleted {jid}", {404: f"{jid} does not exist"})
        return _with_server(config, lambda s: _deluser(s, jid), listen=False)
    if cmd == "users":
        online = _live_users(config, args.host)
        if online is not None:
            return online
        return _with_server(config, lambda s: _users(s, args.host), listen=False)
    if cmd == "export-user":
        jid = _jid(args.jid, config)
        return _with_server(config, lambda s: _export(s, jid, args.output), listen=False)
    if cmd == "export":
        jid = _jid(args.jid, config)
        output = args.output or Path(f"{jid.bare}.tar.gz")
        return _with_server(config, lambda s: _export_bundle(s, jid, output), listen=False)
    if cmd == "erase":
        jid = _jid(args.jid, config)
        grace = 0.0 if args.cancel else _grace(args.grace)
        live_erase = _live_erase(config, jid, grace, args.cancel)
        if live_erase is not None:
            return live_erase
        return _with_server(config, lambda s: _erase(s, jid, grace, args.cancel), listen=False)
    if cmd == "token":
        return _with_server(config, lambda s: _token(s, args), listen=False)
    if cmd == "import-users":
        return _with_server(config, lambda s: _import(s, args.file, config), listen=False)
    return 2


def _q(jid: JID) -> str:
    return quote(str(jid), safe="@")


def _live(
    config: ServerConfig, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any] | None:
    """Ask the running server (its control socket, :mod:`xmppd.control`); ``None``
    when none runs, so the caller works on the database itself."""
    from xmppd.control import ServerDown, call

    try:
        return asyncio.run(call(config.server.data_dir, method, path, body))
    except ServerDown:
        return None


def _report(answer: tuple[int, Any], done: str, known: dict[int, str]) -> int:
    status, data = answer
    if status < 300:
        print(done)
        return 0
    detail = data.get("detail", "") if isinstance(data, dict) else ""
    print(known.get(status) or f"refused by the server ({status}): {detail}", file=sys.stderr)
    return 1


def _live_users(config: ServerConfig, host: str | None) -> int | None:
    """``xmppd users`` through the running server: every account, with the resources
    of those online. ``None`` when no server runs."""
    sessions = _live(config, "GET", "/sessions")
    if sessions is None:
        return None
    online: dict[str, list[str]] = {}
    for session in sessions[1].get("sessions", []):
        bare, _, resource = session["jid"].partition("/")
        online.setdefault(bare, []).append(resource)
    for domain in [host] if host else list(config.hosts):
        after = ""
        while True:
            answer = _live(
                config, "GET", f"/users?host={quote(domain)}&limit=1000&after={quote(after)}"
            )
            if answer is None or answer[0] != 200:
                print(f"refused by the server: {answer}", file=sys.stderr)
                return 1
            for name in answer[1]["users"]:
                jid = f"{name}@{domain}"
                resources = online.get(jid)
                print(f"{jid}\tonline: {', '.join(sorted(resources))}" if resources else jid)
            after = answer[1]["next"]
            if after is None:
                break
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _loopback_only(config: ServerConfig) -> ServerConfig:
    """``config`` with every listener bound to 127.0.0.1."""
    return config.on_loopback()


LOOPBACK_NOTE = (
    "listening on loopback (127.0.0.1) only: clients on other machines cannot connect. "
    "To listen publicly run `./dev run --public`, or `xmppd run` without --loopback, "
    "with the address of each [[listeners]] set in the configuration (default 0.0.0.0)"
)


def _supervise(config: ServerConfig, *, loopback: bool) -> int:
    """``xmppd run`` with ``server.workers`` > 1: prepare once, then run and watch the
    workers (:mod:`xmppd.workers`)."""
    from xmppd.pidfile import remove_pid_file, write_pid_file
    from xmppd.workers import Supervisor, prepare

    async def main_async() -> int:
        await prepare(config)
        supervisor = Supervisor(config, config.worker_count, loopback=loopback)
        pid_path = write_pid_file(config.server.data_dir)
        try:
            return await supervisor.run()
        finally:
            remove_pid_file(pid_path)

    try:
        return asyncio.run(main_async())
    except SchemaOutOfDate as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1


def _run(config: ServerConfig, *, loopback: bool = False, worker: int | None = None) -> int:
    """Serve in this process (alone, or as worker ``worker`` of a supervisor)."""
    from xmppd.pidfile import remove_pid_file, write_pid_file
    from xmppd.server import Server
    from xmppd.workers import die_with_supervisor, signal_ready

    if worker is not None:
        die_with_supervisor()
    _install_uvloop()

    async def main_async() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if worker is None:
            loop.add_signal_handler(signal.SIGINT, stop.set)
        else:  # Ctrl-C reaches the whole process group: the supervisor decides
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = Server(config, worker=worker)
        await server.start()
        if worker is not None:
            signal_ready()
        gcpolicy.install()  # after start-up: what it loaded is frozen
        ports = ", ".join(f"{p} ({mode})" for mode, p in server.listening_ports)
        log.info("xmppd %s serving %s on %s", __version__, ", ".join(config.hosts), ports)
        if loopback:
            log.info(LOOPBACK_NOTE)
        reloading = asyncio.Lock()

        async def reload() -> None:
            async with reloading:  # one at a time; a second SIGHUP waits its turn
                await server.reload()

        loop.add_signal_handler(signal.SIGHUP, lambda: server.spawn(reload(), name="reload"))
        pid_path = write_pid_file(config.server.data_dir) if worker is None else None
        try:
            await stop.wait()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            if pid_path is not None:
                remove_pid_file(pid_path)
            await server.stop()

    try:
        asyncio.run(main_async())
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    except SchemaOutOfDate as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _with_server(
    config: ServerConfig, action: Callable[..., Awaitable[int]], *, listen: bool
) -> int:
    from xmppd.server import Server

    async def go() -> int:
        # Never a cluster node: the command would pass for (and clean up after) the
        # node of the same name.
        server = Server(config, standalone=True)
        await server.start(listen=listen)
        try:
            return await action(server)
        finally:
            await server.stop()

    try:
        return asyncio.run(go())
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    except SchemaOutOfDate as exc:
        print(f"cannot open the database: {exc}", file=sys.stderr)
        return 1


async def _adduser(server: object, jid: JID, password: str) -> int:
    from xmppd.server import Server

    assert isinstance(server, Server)
    if not password:
        print("empty password refused", file=sys.stderr)
        return 1
    try:
        await server.register_user(jid, password)
    except AccountExists:
        print(f"{jid} already exists", file=sys.stderr)
        return 1
    print(f"created {jid}")
    return 0


async def _deluser(server: object, jid: JID) -> int:
    from xmppd.server import Server

    assert isinstance(server, Server)
    if not await server.accounts.exists(jid):
        print(f"{jid} does not exist", file=sys.stderr)
        return 1
    await server.remove_user(jid)
    print(f"deleted {jid}")
    return 0


async def _passwd(server: object, jid: JID, password: str) -> int:
    from xmppd.server import Server

    assert isinstance(server, Server)
    if not password:
        print("empty password refused", file=sys.stderr)
        return 1
    try:
        await server.accounts.set_password(jid, password)
    except NoSuchAccount:
        print(f"{jid} does not exist", file=sys.stderr)
        return 1
    print(f"password of {jid} changed")
    return 0


async def _users(server: object, host: str | None) -> int:
    from xmppd.server import Server

    assert isinstance(server, Server)
    for domain in [host] if host else list(server.hosts):
        for username in await server.accounts.list(domain):
            print(f"{username}@{domain}")
    return 0


async def _export(server: object, jid: JID, output: Path | None) -> int:
    from xmppd.export import to_bytes
    from xmppd.server import Server

    assert isinstance(server, Server)
    if not await server.accounts.exists(jid):
        print(f"{jid} does not exist", file=sys.stderr)
        return 1
    data = to_bytes(await server.export_user(jid))
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        await asyncio.to_thread(output.write_bytes, data)
        print(f"wrote {output}", file=sys.stderr)
    return 0


def _grace(text: str) -> float:
    """``--grace``: a number of days, or a duration (``12h``)."""
    from xmppd.config import parse_duration

    try:
        return float(text) * 86400.0
    except ValueError:
        pass
    try:
        return parse_duration(text)
    except ValueError:
        raise SystemExit(
            f"--grace: expected days or a duration such as '12h', got {text!r}"
        ) from None


async def _export_bundle(server: object, jid: JID, output: Path) -> int:
    from xmppd.datarights import write_export
    from xmppd.server import Server

    assert isinstance(server, Server)
    try:
        files = await write_export(server.core, jid, output)
    except NoSuchAccount:
        print(f"{jid} does not exist", file=sys.stderr)
        return 1
    print(f"wrote {output} ({files} files)")
    return 0


def _live_erase(config: ServerConfig, jid: JID, grace: float, cancel: bool) -> int | None:
    """``xmppd erase`` through the running server, so the account's sessions end at
    once (the REST API's ``/users/{jid}/erasure``). ``None`` when no server runs."""
    if cancel:
        live = _live(config, "DELETE", f"/users/{_q(jid)}/erasure")
        if live is None:
            return None
        return _report(
            live,
            f"erasure of {jid} cancelled; set a password to enable it again",
            {404: f"no erasure of {jid} is pending"},
        )
    live = _live(config, "POST", f"/users/{_q(jid)}/erasure", {"grace_days": grace / 86400})
    if live is None:
        return None
    status, data = live
    if status < 300 and isinstance(data, dict) and data.get("erase_at") is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data["erase_at"]))
        print(f"disabled {jid}; its data is erased at {when}")
        return 0
    return _report(
        live,
        f"erased {jid}",
        {404: f"{jid} does not exist", 422: "the grace period must be between 0 and 366 days"},
    )


async def _erase(server: object, jid: JID, grace: float, cancel: bool) -> int:
    from xmppd.datarights import cancel_erasure, erase_user
    from xmppd.server import Server

    assert isinstance(server, Server)
    if cancel:
        if not await cancel_erasure(server.core, jid):
            print(f"no erasure of {jid} is pending", file=sys.stderr)
            return 1
        print(f"erasure of {jid} cancelled; set a password to enable it again")
        return 0
    try:
        pending = await erase_user(server.core, jid, grace)
    except NoSuchAccount:
        print(f"{jid} does not exist", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if pending is None:
        print(f"erased {jid}")
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(pending.erase_at))
        print(f"disabled {jid}; its data is erased at {when}")
    return 0


async def _import(server: object, path: Path, config: ServerConfig) -> int:
    """Create accounts from ``jid password`` lines; every line is checked first."""
    from xmppd.server import Server

    assert isinstance(server, Server)
    text = await asyncio.to_thread(path.read_text)
    accounts: list[tuple[JID, str]] = []
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(None, 1)
        password = fields[1].strip() if len(fields) > 1 else ""
        try:
            jid = JID.parse(fields[0])
        except InvalidJID as exc:
            problems.append(f"{path}:{number}: invalid JID: {exc}")
            continue
        if not jid.local or jid.resource or jid.domain not in config.hosts:
            problems.append(f"{path}:{number}: not an account JID of this server")
        elif not password:
            problems.append(f"{path}:{number}: no password")
        elif problem := password_problem(password, config.accounts.min_password_length):
            problems.append(f"{path}:{number}: {problem}")
        else:
            accounts.append((jid, password))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    sem = asyncio.Semaphore(os.cpu_count() or 2)
    created = 0

    async def one(jid: JID, password: str) -> None:
        nonlocal created
        async with sem:
            try:
                await server.register_user(jid, password)
                created += 1
            except AccountExists:
                pass

    await asyncio.gather(*(one(jid, password) for jid, password in accounts))
    print(f"created {created} of {len(accounts)} accounts")
    return 0


async def _token(server: object, args: argparse.Namespace) -> int:
    from xmppd.apitokens import ApiTokens
    from xmppd.server import Server

    assert isinstance(server, Server)
    tokens = ApiTokens(server.core.db)
    if args.token_command == "create":
        token, text = await tokens.create(args.name, args.scope)
        print(text)
        print(
            f"id {token.token_id}, scope {token.scope}: keep it, it is not shown again",
            file=sys.stderr,
        )
        return 0
    if args.token_command == "list":
        for t in await tokens.list():
            print(f"{t.token_id}\t{t.scope}\t{t.name}")
        return 0
    if not await tokens.revoke(args.token_id):
        print(f"no token {args.token_id}", file=sys.stderr)
        return 1
    return 0
