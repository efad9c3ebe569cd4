# -*- test-case-name: tests.unit.test_stun_message -*-
"""
STUN over streams and the ChannelData message: RFC 8489 section 6.2.2 (framing STUN
over a stream transport) and RFC 8656 section 12 (ChannelData, with its padding over
stream transports, 12.5).

A pure model module: no sockets, no reactor, no clock.
"""

from __future__ import annotations

import struct

from holepunch.stun.wire import (
    CHANNEL_NUMBER_MAX,
    CHANNEL_NUMBER_MIN,
    HEADER_LENGTH,
    MAX_VALUE_LENGTH,
    BytesLike,
    StunDecodeError,
    StunEncodeError,
    check_range,
    is_bytes,
    pad_length,
)


def is_stun(data: BytesLike) -> bool:
    """
    A cheap test for demultiplexing: does ``data`` look like one STUN message
    with the magic cookie?  (No attribute parsing.)
    """
    return (
        len(data) >= HEADER_LENGTH
        and data[0] & 0xC0 == 0
        and data[4:8] == b"\x21\x12\xa4\x42"
        and (data[2] << 8 | data[3]) % 4 == 0
        and HEADER_LENGTH + (data[2] << 8 | data[3]) == len(data)
    )


def message_length(prefix: BytesLike) -> int | None:
    """
    The total length of the STUN message or TURN ChannelData frame (padded
    to 4 bytes, as over TCP) that starts with ``prefix``.

    :return: ``None`` if fewer than 4 bytes are given.
    :raise StunDecodeError: if ``prefix`` starts neither (first two bits 1x),
        or claims a STUN length that is not a multiple of 4.
    """
    if len(prefix) < 4:
        return None
    length = prefix[2] << 8 | prefix[3]
    kind = prefix[0] & 0xC0
    if kind == 0x00:
        if length % 4:
            raise StunDecodeError(f"STUN message length {length} is not a multiple of 4")
        return HEADER_LENGTH + length
    if kind == 0x40:
        return 4 + length + pad_length(length)
    raise StunDecodeError("neither a STUN message nor a ChannelData message")


class StreamFramer:
    """
    Split a byte stream (STUN over TCP or TLS, RFC 8489 6.2.2) into STUN
    messages and ChannelData frames (padded to 4 bytes, RFC 8656 12.5).

    Once it has raised, a framer keeps raising: the stream cannot be
    resynchronised.
    """

    def __init__(self, max_size: int = 65535 + 20) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._error: StunDecodeError | None = None

    @property
    def buffered(self) -> int:
        """
        How many bytes of an incomplete frame are held.
        """
        return len(self._buffer)

    def feed(self, data: BytesLike) -> list[bytes]:
        """
        Add ``data`` and return the frames it completes, in order.

        :raise StunDecodeError: the stream holds something else, or a frame
            longer than ``max_size``.
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames: list[bytes] = []
        position = 0
        try:
            while True:
                size = message_length(self._buffer[position : position + 4])
                if size is None:
                    break
                if size > self.max_size:
                    raise StunDecodeError(f"a {size}-byte frame exceeds {self.max_size} bytes")
                if len(self._buffer) - position < size:
                    break
                frames.append(bytes(self._buffer[position : position + size]))
                position += size
        except StunDecodeError as e:
            self._error = e
            self._buffer.clear()
            raise
        del self._buffer[:position]
        return frames


def encode_channel_data(channel: int, data: bytes, pad: bool = False) -> bytes:
    """
    A ChannelData message (RFC 8656 12.4); ``pad=True`` pads it to a multiple
    of 4 bytes, as required over stream transports (12.5).
    """
    check_range(channel, CHANNEL_NUMBER_MIN, CHANNEL_NUMBER_MAX, "channel number")
    if not is_bytes(data) or len(data) > MAX_VALUE_LENGTH:
        raise StunEncodeError("ChannelData application data must be bytes up to 65535 long")
    padding = bytes(pad_length(len(data))) if pad else b""
    return struct.pack("!HH", channel, len(data)) + bytes(data) + padding


def decode_channel_data(frame: BytesLike) -> tuple[int, bytes]:
    """
    Parse a ChannelData message into ``(channel, data)``.  Up to the padding
    to a multiple of 4 bytes may follow the data (it is optional over UDP).

    :raise StunDecodeError: if ``frame`` is not one ChannelData message.
    """
    if not is_bytes(frame):
        raise StunDecodeError(f"expected bytes, not {type(frame).__name__}")
    if len(frame) < 4:
        raise StunDecodeError("too short for a ChannelData header")
    channel, length = struct.unpack_from("!HH", frame)
    if not CHANNEL_NUMBER_MIN <= channel <= CHANNEL_NUMBER_MAX:
        raise StunDecodeError(f"channel number 0x{channel:04x} is outside 0x4000..0x4FFF")
    if not 4 + length <= len(frame) <= 4 + length + pad_length(length):
        raise StunDecodeError(
            f"ChannelData length {length} does not match the {len(frame) - 4} bytes after "
            "the header"
        )
    return channel, bytes(frame[4 : 4 + length])


__all__ = [
    "StreamFramer",
    "decode_channel_data",
    "encode_channel_data",
    "is_stun",
    "message_length",
]
