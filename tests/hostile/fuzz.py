"""The long fuzz campaign (issue 15): ``python -m tests.hostile.fuzz --minutes N``.

Targets: ``jid``, ``sasl``, ``sasl2`` (no sockets: :mod:`tests.hostile.fuzz_targets`)
and ``stanzas`` (random stanzas in every module's namespaces to a real server started
here: :mod:`tests.hostile.stanzafuzz`). The time is shared between the chosen targets
(``--targets jid,sasl``; default all).

The socket-less targets run under atheris (libFuzzer, coverage-guided) when it is
installed (``pip install atheris``), in a child process per target, with their corpus in
``tests/hostile/corpus/<target>/`` and crashing inputs written to
``tests/hostile/corpus/crashers/<target>-*``; without atheris they run under hypothesis
with a long budget (failing examples kept in ``tests/hostile/corpus/hypothesis/``).
Crashing stanzas are kept in ``tests/hostile/corpus/crashers/*.xml``. The suite replays
every kept crasher (``test_jid_sasl_properties.py``, ``test_module_stanzas.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from tests.hostile import fuzz_targets

HERE: Final = Path(__file__).resolve().parent
CORPUS: Final = HERE / "corpus"
CRASHERS: Final = CORPUS / "crashers"
TARGETS: Final = ("jid", "sasl", "sasl2", "stanzas")
HYPOTHESIS_EXAMPLES: Final = 2000
"""Examples per round of a property when atheris is not installed."""
SEPARATOR: Final = b"\x00\xff"
"""Splits a ``sasl`` input into the client's messages."""


# ------------------------------------------------------------------ bytes → target input
# One decoding, shared by atheris and the replay of kept crashers (no atheris needed).


def run_bytes(target: str, data: bytes) -> None:
    """Feed raw fuzzer bytes to ``target``."""
    if target == "jid":
        fuzz_targets.jid_target(data.decode("utf-8", "replace"))
        fuzz_targets.jid_target(data.decode("latin-1"))
    elif target == "sasl":
        mechanisms = fuzz_targets.MECHANISMS
        name = mechanisms[data[0] % len(mechanisms)] if data else mechanisms[0]
        messages = data[1:].split(SEPARATOR)[:5]
        fuzz_targets.sasl_target(name, messages)
    elif target == "sasl2":
        fuzz_targets.sasl2_target(data)
    else:
        raise ValueError(target)


def kept_crashers(target: str) -> list[Path]:
    return sorted(CRASHERS.glob(f"{target}-*"))


# ------------------------------------------------------------------ atheris


def _atheris_child(target: str, seconds: int) -> int:
    """Run ``target`` under atheris for ``seconds`` in a child process."""
    corpus = CORPUS / target
    corpus.mkdir(parents=True, exist_ok=True)
    CRASHERS.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "tests.hostile.fuzz",
        "--atheris-child",
        target,
        "--",
        f"-max_total_time={seconds}",
        f"-artifact_prefix={CRASHERS}/{target}-",
        "-max_len=4096",
        "-timeout=20",
        str(corpus),
    ]
    return subprocess.run(args, check=False).returncode


def _atheris_main(target: str, argv: list[str]) -> None:
    import atheris  # type: ignore[import-not-found]

    def one(data: bytes) -> None:
        run_bytes(target, data)

    atheris.instrument_all()  # coverage of everything loaded: xmppd's code included
    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()


# ------------------------------------------------------------------ hypothesis


def _hypothesis(target: str, seconds: float) -> int:
    """Without atheris: the suite's properties with a large budget, repeated until the
    time is up; failing examples go to the hypothesis database under corpus/."""
    # The properties read their budget and example database when first imported (a test
    # that already carries settings cannot be given others: hypothesis refuses).
    os.environ["XMPPD_FUZZ_EXAMPLES"] = str(HYPOTHESIS_EXAMPLES)
    os.environ["XMPPD_FUZZ_DATABASE"] = str(CORPUS / "hypothesis")
    from tests.hostile import test_jid_sasl_properties as props

    tests = {
        "jid": props.test_jid_parse_raises_only_invalid_jid_and_round_trips,
        "sasl": props.test_sasl_exchanges_end_only_in_documented_failures,
        "sasl2": props.test_sasl2_authenticate_reader_raises_only_documented_errors,
    }
    test = tests[target]
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        try:
            test()
        except Exception as exc:  # the falsifying example is printed and stored
            print(f"{target}: FAILED: {exc!r}", flush=True)
            return 1
    print(f"{target}: {rounds} rounds of {HYPOTHESIS_EXAMPLES} examples, no failure", flush=True)
    return 0


# ------------------------------------------------------------------ stanzas


async def _stanzas(seconds: float) -> int:
    from tests.hostile import stanzafuzz
    from tests.hostile.test_module_stanzas import FUZZ_MODULES, PASSWORD
    from tests.support.server import running_server
    from tests.support.xmlclient import XmlClient

    failures = 0
    sent = 0
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server(Path(tmp), modules=FUZZ_MODULES) as srv,
    ):
        for user in ("fuzz", "other"):
            srv.cli("adduser", f"{user}@{srv.domain}", input=f"{PASSWORD}\n")
        deadline = time.monotonic() + seconds
        base = random.randrange(1 << 40)
        while time.monotonic() < deadline:
            client = await XmlClient.login(srv, f"fuzz@{srv.domain}", PASSWORD, resource="r")
            client.send("<presence/>")
            try:
                for _ in range(100):
                    case = stanzafuzz.generate(base + sent, srv.domain)
                    sent += 1
                    problem = await stanzafuzz.check(client, case)
                    if problem is None and stanzafuzz.removes_account(case):
                        # The stanza removed the account (XEP-0077): register it again.
                        srv.cli("adduser", f"fuzz@{srv.domain}", input=f"{PASSWORD}\n")
                        break
                    if problem is not None:
                        failures += 1
                        path = stanzafuzz.keep_crasher(case, problem)
                        print(f"stanzas: {problem}: kept {path}", flush=True)
                        if not client.is_connected:
                            break
            finally:
                await client.close()
        crashes = [
            line
            for line in srv.log_text().splitlines()
            if " ERROR " in line or " CRITICAL " in line or "Traceback" in line
        ]
    for line in crashes[:20]:
        print(f"stanzas: log: {line}", flush=True)
    print(f"stanzas: {sent} sent (seeds from {base}), {failures} failures", flush=True)
    return 1 if failures or crashes else 0


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--atheris-child"]:
        target, rest = argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:]
        _atheris_main(target, rest)
        return 0
    parser = argparse.ArgumentParser(prog="python -m tests.hostile.fuzz")
    parser.add_argument("--minutes", type=float, default=10.0, help="total time (default 10)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument(
        "--engine", choices=("auto", "atheris", "hypothesis"), default="auto", help="default auto"
    )
    options = parser.parse_args(argv)
    targets = [t for t in options.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {sorted(unknown)}")
    use_atheris = options.engine == "atheris" or (
        options.engine == "auto" and importlib.util.find_spec("atheris") is not None
    )
    share = options.minutes * 60 / len(targets)
    status = 0
    for target in targets:
        print(
            f"== {target}: {share:.0f} s ({'atheris' if use_atheris else 'hypothesis'})", flush=True
        )
        if target == "stanzas":
            status |= asyncio.run(_stanzas(share))
        elif use_atheris:
            status |= _atheris_child(target, max(1, int(share)))
        else:
            status |= _hypothesis(target, share)
    return status


if __name__ == "__main__":
    sys.exit(main())
