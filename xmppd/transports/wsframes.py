"""The WebSocket frame layer (RFC 6455 §5), server side, without I/O.

:class:`FrameReader` turns the bytes a client sends after the opening handshake into
whole messages and control frames; :func:`frame` builds the (unmasked) frames a server
sends. Every byte held between reads is counted against a limit: a frame header holds
at most 14 bytes, a message (all its fragments) at most ``max_message`` bytes, and a
control frame at most 125 (RFC 6455 §5.5). A message over the limit is refused from
the frame header that announces it, before its payload is read.

No extension is negotiated (no ``permessage-deflate``), so the three RSV bits must be
clear.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Final

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED: Final = 1003
CLOSE_INVALID_DATA: Final = 1007
CLOSE_MESSAGE_TOO_BIG: Final = 1009

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_LEN16: Final = struct.Struct("!H")
_LEN64: Final = struct.Struct("!Q")


def accept_key(key: str) -> str | None:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2),
    or ``None`` if the key is not 16 bytes in base64."""
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except ValueError:
        return None
    if len(raw) != 16:
        return None
    digest = hashlib.sha1(key.strip().encode("ascii") + _GUID).digest()  # RFC 6455 §4.2.2
    return base64.b64encode(digest).decode("ascii")


def frame(opcode: int, payload: bytes) -> bytes:
    """The header of one final, unmasked frame carrying ``payload``."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return bytes((first, 126)) + _LEN16.pack(n)
    return bytes((first, 127)) + _LEN64.pack(n)


def close_payload(code: int, reason: str = "") -> bytes:
    return _LEN16.pack(code) + reason.encode("utf-8")[:123]


class ProtocolViolation(Exception):
    """The client broke RFC 6455; the connection fails with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class MessageTooBig(Exception):
    """A message (or the fragments of one) longer than the limit was announced."""


class FrameReader:
    """Client frames in, ``(opcode, payload)`` pairs out: data messages reassembled
    from their fragments (opcode text or binary), control frames as they come
    (close, ping, pong)."""

    __slots__ = (
        "_buffer",
        "_fragments",
        "_fragments_size",
        "_held",
        "_message_opcode",
        "_need",
        "_parts",
        "max_message",
    )

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = b""
        """An unfinished frame header (at most 13 bytes)."""
        self._parts: list[bytes] = []
        """A frame whose header has arrived, and as much of its payload as arrived:
        joined once ``_need`` bytes are held, not at every read (a frame of 250 KB
        arriving a byte per read was 1.3 s of joining)."""
        self._held = 0
        self._need = 0
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._message_opcode = 0

    @property
    def pending(self) -> int:
        """Bytes held: an unfinished frame and the fragments of an unfinished message."""
        return len(self._buffer) + self._held + self._fragments_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Read ``data``; raises :class:`ProtocolViolation` or :class:`MessageTooBig`."""
        if self._need:
            self._parts.append(data)
            self._held += len(data)
            if self._held < self._need:
                return []
            buf = b"".join(self._parts)
            self._parts, self._held, self._need = [], 0, 0
        else:
            buf = self._buffer + data if self._buffer else data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            opcode, length, head = b0 & 0x0F, b1 & 0x7F, 6
            if length == 126:
                if end - pos < 4:
                    break
                length = _LEN16.unpack_from(buf, pos + 2)[0]
                head = 8
            elif length == 127:
                if end - pos < 10:
                    break
                length = _LEN64.unpack_from(buf, pos + 2)[0]
                head = 14
            if opcode >= 0x8:
                if length > 125 or not b0 & 0x80:
                    raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "bad control frame")
            elif self._fragments_size + length > self.max_message:
                raise MessageTooBig()
            if end - pos < head + length:
                self._parts, self._held, self._need = [buf[pos:]], end - pos, head + length
                self._buffer = b""
                return out
            mask = buf[pos + head - 4 : pos + head]
            start = pos + head
            pos = start + length
            payload = _unmask(buf[start:pos], mask) if length else b""
            self._frame(b0 & 0x80, opcode, payload, out)
        self._buffer = buf[pos:] if pos < end else b""
        return out

    def _frame(self, fin: int, opcode: int, payload: bytes, out: list[tuple[int, bytes]]) -> None:
        if opcode >= 0x8:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "unknown control opcode")
            out.append((opcode, payload))
            return
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "continuation of nothing")
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if fin:
                whole = b"".join(self._fragments)
                self._fragments, self._fragments_size = None, 0
                out.append((self._message_opcode, whole))
            return
        if opcode not in (OP_TEXT, OP_BINARY):
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "unknown data opcode")
        if self._fragments is not None:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        if fin:
            out.append((opcode, payload))
        else:
            self._fragments, self._fragments_size = [payload], len(payload)
            self._message_opcode = opcode


def _unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (one big-integer XOR: fast in
    CPython for any length)."""
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
