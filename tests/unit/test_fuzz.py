"""A short run of the fuzz campaign (holepunch.testing.fuzz) and hypothesis properties of
the parsers of untrusted input: STUN and ChannelData, ICE candidates, signaling messages.

The long campaign and its figures: docs/benchmarks.md, "Fuzzing".
"""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from holepunch.ice.candidate import Candidate, CandidateError
from holepunch.signaling.messages import MessageError, parse_request
from holepunch.stun.framing import StreamFramer, decode_channel_data, encode_channel_data
from holepunch.stun.message import StunMessage, decode, encode
from holepunch.stun.server import StunResponder
from holepunch.stun.wire import MAX_ATTRIBUTES, Address, MessageClass, StunDecodeError
from holepunch.testing import fuzz


class ShortCampaignTests(SynchronousTestCase):
    """A few thousand mutated inputs per target: only the documented errors come out."""

    def check(self, target: str, inputs: int) -> None:
        report = fuzz.run(target, inputs, seed=17)
        self.assertEqual(report.inputs, inputs)
        self.assertEqual(report.unexpected, 0, "\n".join(report.lines()))

    def test_stun(self) -> None:
        """3,000 mutated STUN/TURN/ChannelData inputs raise only StunDecodeError; the server never raises."""
        self.check("stun", 3000)

    def test_candidate(self) -> None:
        """5,000 mutated candidate lines raise only CandidateError, and what parses round-trips."""
        self.check("candidate", 5000)

    def test_signaling(self) -> None:
        """5,000 mutated signaling messages raise only MessageError."""
        self.check("signaling", 5000)

    def test_deterministic(self) -> None:
        """The same seed gives the same inputs."""
        a = fuzz.BinaryMutator(random.Random(5), fuzz.stun_seeds())
        b = fuzz.BinaryMutator(random.Random(5), fuzz.stun_seeds())
        self.assertEqual([a() for _ in range(200)], [b() for _ in range(200)])

    def test_unexpected_exception_is_reported(self) -> None:
        """An exception other than the documented ones is reported with its input in hex."""

        def broken(data: bytes | str) -> None:
            raise IndexError("boom")

        original = fuzz.make_target

        def make(
            name: str, rng: random.Random
        ) -> tuple[fuzz.Target, tuple[type[BaseException], ...], fuzz.Mutator]:
            _, expected, mutate = original(name, rng)
            return broken, expected, mutate

        self.patch(fuzz, "make_target", make)
        report = fuzz.run("stun", 10)
        self.assertEqual(report.unexpected, 10)
        [crash] = report.crashes
        self.assertIn("IndexError: boom", crash.error)
        bytes.fromhex(crash.input_hex)
        self.assertIn("UNEXPECTED IndexError", "\n".join(report.lines()))


_attribute = st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40))


def _message(attributes: list[tuple[int, bytes]], tid: bytes, method: int, cls: int) -> StunMessage:
    msg = StunMessage(method, MessageClass(cls), tid)
    for t, v in attributes:
        # Skip the seal attributes: encode() gives them meaning of their own.
        if t not in (0x0008, 0x001C, 0x8028):
            msg.add(t, v)
    return msg


class PropertyTests(SynchronousTestCase):
    """Hypothesis properties of the parsers."""

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(_attribute, max_size=MAX_ATTRIBUTES - 1),
        st.binary(min_size=12, max_size=12),
        st.integers(0, 0xFFF),
        st.integers(0, 3),
        st.booleans(),
    )
    def test_stun_round_trip(
        self, attributes: list[tuple[int, bytes]], tid: bytes, method: int, cls: int, fp: bool
    ) -> None:
        """decode(encode(m)) == m for any message under the attribute cap, sealed or not."""
        msg = _message(attributes, tid, method, cls)
        again = decode(encode(msg, fingerprint=fp))
        self.assertEqual(again.stripped(), msg.stripped())
        self.assertEqual(again.check_fingerprint(), fp)

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=600))
    def test_stun_garbage(self, data: bytes) -> None:
        """Arbitrary bytes: decode raises only StunDecodeError; the server answers or drops."""
        try:
            decode(data)
        except StunDecodeError:
            pass
        StunResponder(Address("192.0.2.1", 3478), rate=0).handle(
            data, Address("198.51.100.1", 1), Address("192.0.2.1", 3478), 0.0
        )
        try:
            StreamFramer().feed(data)
        except StunDecodeError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0x4000, 0x4FFF), st.binary(max_size=300), st.booleans())
    def test_channel_data_round_trip(self, channel: int, data: bytes, pad: bool) -> None:
        """decode_channel_data(encode_channel_data(c, d)) == (c, d), padded or not."""
        self.assertEqual(
            decode_channel_data(encode_channel_data(channel, data, pad)), (channel, data)
        )

    @settings(max_examples=500, deadline=None)
    @given(st.text(max_size=200))
    def test_candidate_garbage(self, line: str) -> None:
        """Arbitrary text: from_sdp raises only CandidateError."""
        try:
            Candidate.from_sdp(line)
        except CandidateError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(["host", "srflx", "prflx", "relay"]),
        st.ip_addresses().map(str),
        st.integers(0, 65535),
        st.integers(1, 2**31 - 1),
        st.one_of(st.none(), st.ip_addresses().map(str)),
        st.one_of(st.none(), st.integers(0, 65535)),
    )
    def test_candidate_round_trip(
        self, kind: str, host: str, port: int, priority: int, raddr: str | None, rport: int | None
    ) -> None:
        """from_sdp(c.to_sdp()) == c for any candidate."""
        c = Candidate("abc", 1, "udp", priority, host, port, kind, raddr, rport)
        self.assertEqual(Candidate.from_sdp(c.to_sdp()), c)

    @settings(max_examples=500, deadline=None)
    @given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
    def test_signaling_garbage(self, payload: bytes | str) -> None:
        """Arbitrary bytes or text: parse_request raises only MessageError."""
        try:
            parse_request(payload, 65536)
        except MessageError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda children: st.lists(children) | st.dictionaries(st.text(), children),
            max_leaves=20,
        ),
        st.sampled_from(["register", "join-room", "offer", "ping", "connection-state", "x"]),
    )
    def test_signaling_json_values(self, value: object, kind: str) -> None:
        """Any JSON value in any field of a well-typed message: only MessageError."""
        for name in ("peerId", "roomId", "to", "from", "offer", "metadata", "id", "state"):
            try:
                payload = json.dumps({"type": kind, "peerId": "p", "roomId": "r", name: value})
            except ValueError:
                continue
            try:
                parse_request(payload, 65536)
            except MessageError:
                pass
