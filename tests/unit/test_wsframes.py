"""The WebSocket frame reader (RFC 6455 §5) on its own: reassembly across reads and
fragments, control frames, and every refusal with its close code."""

from __future__ import annotations

import os
import struct

import pytest

from xmppd.transports import wsframes
from xmppd.transports.wsframes import FrameReader, MessageTooBig, ProtocolViolation


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """A frame as a client sends it (masked)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, (0x80 if mask else 0) | n))
    elif n < 65536:
        head = bytes((first, (0x80 if mask else 0) | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, (0x80 if mask else 0) | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = b"\x37\xfa\x21\x3d"  # RFC 6455 §5.7's example mask (fixed: test ids stay stable)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_the_rfc_example_key_is_accepted() -> None:
    # RFC 6455 §1.3's worked example.
    assert wsframes.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert wsframes.accept_key("c2hvcnQ=") is None  # 5 bytes, not 16
    assert wsframes.accept_key("not base64!") is None


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 200_000])
def test_a_message_split_at_every_kind_of_boundary_comes_out_whole(size: int) -> None:
    payload = os.urandom(size)
    data = client_frame(wsframes.OP_BINARY, payload) + client_frame(wsframes.OP_TEXT, b"<x/>")
    for step in (1, 3, 7, 1000, len(data)):
        reader = FrameReader(max_message=1 << 20)
        out: list[tuple[int, bytes]] = []
        for i in range(0, len(data), step):
            out += reader.feed(data[i : i + step])
        assert out == [(wsframes.OP_BINARY, payload), (wsframes.OP_TEXT, b"<x/>")]
        assert reader.pending == 0


def test_fragments_are_joined_and_control_frames_may_come_between_them() -> None:
    reader = FrameReader(max_message=100)
    data = (
        client_frame(wsframes.OP_TEXT, b"<message>", fin=False)
        + client_frame(wsframes.OP_PING, b"hi")
        + client_frame(wsframes.OP_CONTINUATION, b"<body>x</body>", fin=False)
        + client_frame(wsframes.OP_CONTINUATION, b"</message>")
    )
    assert reader.feed(data) == [
        (wsframes.OP_PING, b"hi"),
        (wsframes.OP_TEXT, b"<message><body>x</body></message>"),
    ]


def test_a_message_over_the_limit_is_refused_from_its_header() -> None:
    reader = FrameReader(max_message=1000)
    header_only = client_frame(wsframes.OP_TEXT, b"x" * 1001)[:8]  # 2 + 2 + mask
    with pytest.raises(MessageTooBig):
        reader.feed(header_only)
    # The same through fragments: the third one's header takes it over the limit.
    reader = FrameReader(max_message=1000)
    reader.feed(client_frame(wsframes.OP_TEXT, b"x" * 400, fin=False))
    reader.feed(client_frame(wsframes.OP_CONTINUATION, b"x" * 400, fin=False))
    assert reader.pending == 800
    with pytest.raises(MessageTooBig):
        reader.feed(client_frame(wsframes.OP_CONTINUATION, b"x" * 201)[:8])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (client_frame(wsframes.OP_TEXT, b"x", mask=False), "unmasked"),
        (bytes([0x80 | 0x40 | 0x1, 0x80]) + b"\0\0\0\0", "RSV1 without an extension"),
        (client_frame(wsframes.OP_PING, b"x" * 126), "control frame over 125 bytes"),
        (client_frame(wsframes.OP_PING, b"x", fin=False), "fragmented control frame"),
        (client_frame(wsframes.OP_CONTINUATION, b"x"), "continuation of nothing"),
        (client_frame(0x3, b"x"), "reserved data opcode"),
        (client_frame(0xB, b"x"), "reserved control opcode"),
        (
            client_frame(wsframes.OP_TEXT, b"a", fin=False) + client_frame(wsframes.OP_TEXT, b"b"),
            "a new message inside a fragmented one",
        ),
    ],
)
def test_protocol_violations_fail_with_1002(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolViolation) as err:
        FrameReader(max_message=1000).feed(data)
    assert err.value.code == wsframes.CLOSE_PROTOCOL_ERROR, why


def test_server_frames_are_unmasked_with_the_shortest_length() -> None:
    assert wsframes.frame(wsframes.OP_TEXT, b"abc") == b"\x81\x03"
    assert wsframes.frame(wsframes.OP_TEXT, b"x" * 126) == b"\x81\x7e\x00\x7e"
    assert wsframes.frame(wsframes.OP_BINARY, b"x" * 70000)[:2] == b"\x82\x7f"
    assert wsframes.close_payload(1009, "too big") == b"\x03\xf1too big"


def test_what_an_unfinished_frame_holds_is_counted() -> None:
    """The bytes of a frame whose payload is still arriving count in ``pending`` (the
    stream's limits are checked against it), a byte at a time as in one piece."""
    data = client_frame(wsframes.OP_TEXT, b"<message/>" * 100)
    reader = FrameReader(max_message=1 << 20)
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) == []
        assert reader.pending == i + 1
    assert reader.feed(data[-1:]) == [(wsframes.OP_TEXT, b"<message/>" * 100)]
    assert reader.pending == 0
