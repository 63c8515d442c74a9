"""One identity for the cluster: the server secret comes from ``[server] secret_file``
or, in a cluster on PostgreSQL, from the database, where the first node to start puts
it (nodes starting together agree). A FAST token issued by one node works on the
other, and both answer the same SCRAM salt for an account that does not exist."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.clients import register_account
from tests.support.cluster import ClusterNodes, running_cluster
from tests.support.sasl2 import FAST, Sasl2Client, bind_request
from tests.support.server import postgres_database
from xmppd.config import load_config
from xmppd.server_secret import SecretError, load, shared_secret
from xmppd.storage.database import Database
from xmppd.storage.schema import server_secret

pytestmark = pytest.mark.timeout(180)

PW = "s3cret-pw"
_names = itertools.count()

RACER = """
import asyncio, pathlib, sys
from xmppd.server_secret import shared_secret
from xmppd.storage.database import Database

async def main() -> None:
    db = Database(sys.argv[1], pool_size=1)
    await db.fetch_value(__import__("sqlalchemy").select(1))  # connected before the start
    print("ready", flush=True)
    go = pathlib.Path(sys.argv[2])
    while not go.exists():
        await asyncio.sleep(0.005)
    print((await shared_secret(db)).hex())
    await db.close()

asyncio.run(main())
"""


async def migrated(url: str) -> None:
    db = Database(url)
    try:
        await db.start()
    finally:
        await db.close()


async def stored(url: str) -> str:
    db = Database(url)
    try:
        value = await db.fetch_value(sa.select(server_secret.c.secret))
        assert isinstance(value, str)
        return value
    finally:
        await db.close()


def test_processes_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    with postgres_database() as url:
        asyncio.run(migrated(url))
        go = tmp_path / "go"
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, url, str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        try:
            for p in racers:  # every racer has imported and connected...
                assert p.stdout is not None
                assert p.stdout.readline().strip() == "ready"
            go.touch()  # ...when the start file appears
            answers = [p.communicate(timeout=60) for p in racers]
        finally:
            for p in racers:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert all(p.returncode == 0 for p in racers), answers
        secrets = {out.strip() for out, _ in answers}
        assert len(secrets) == 1
        assert secrets == {asyncio.run(stored(url))}


def test_tasks_racing_agree_and_the_first_local_key_wins() -> None:
    with postgres_database() as url:

        async def race() -> None:
            await migrated(url)
            dbs = [Database(url, pool_size=1) for _ in range(6)]
            try:
                keys = await asyncio.gather(
                    *(shared_secret(db, bytes([i]) * 32) for i, db in enumerate(dbs))
                )
                assert len(set(keys)) == 1
                assert keys[0] in {bytes([i]) * 32 for i in range(6)}  # one node's own key
                assert await shared_secret(dbs[0], b"\xff" * 32) == keys[0]
            finally:
                for db in dbs:
                    await db.close()

        asyncio.run(race())


async def test_secret_file_wins_and_must_be_usable(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    path = tmp_path / "x.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nsecret_file = "{secret}"\n'
        '[storage]\nurl = "postgresql+asyncpg://nobody@127.0.0.1:1/none"\n'
        '[cluster]\nredis_url = "redis://127.0.0.1:1/0"\n'
    )
    config = load_config(path)
    db = Database(config.storage_url())  # never used: the file decides
    try:
        with pytest.raises(SecretError, match="does not exist"):
            await load(config, db)
        secret.write_text("ab" * 32 + "\n")
        assert await load(config, db) == bytes.fromhex("ab" * 32)
        text = "a Kubernetes secret: " + uuid.uuid4().hex
        secret.write_text(text)
        assert await load(config, db) == text.encode()
        secret.write_text("too short")
        with pytest.raises(SecretError, match="too short"):
            await load(config, db)
    finally:
        await db.close()
    assert not (tmp_path / "data" / "server.key").exists()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    with running_cluster(tmp_path_factory.mktemp("secret"), nodes=2) as nodes:
        yield nodes


async def test_fast_token_from_one_node_works_on_the_other(cluster: ClusterNodes) -> None:
    node1, node2 = cluster.nodes
    for node in cluster.nodes:  # the secret is the database's, not a file of each node
        assert not (node.data_dir / "server.key").exists()
    name = f"fast{next(_names)}"
    await register_account(node1, name, PW)
    agent = str(uuid.uuid4())
    first = await Sasl2Client.connect(node1, agent)
    try:
        outcome, _ = await first.scram(
            name,
            PW,
            inline=bind_request("Phone")
            + f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>",
        )
        assert outcome.ok, outcome.condition
        assert outcome.token is not None
        token = outcome.token[0]
    finally:
        await first.close()
    second = await Sasl2Client.connect(node2, agent)
    try:
        assert (await second.token(name, token)).ok
    finally:
        await second.close()


async def test_unknown_user_gets_the_same_salt_from_every_node(cluster: ClusterNodes) -> None:
    answers = []
    for node in cluster.nodes:
        client = await Sasl2Client.connect(node)
        try:
            _, server_first = await client.scram("nobody-here", "whatever")
        finally:
            await client.close()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        answers.append((fields["s"], fields["i"]))
    assert answers[0] == answers[1]
