"""Single-use auth tokens: one connection at a time per token (holepunch.signaling.singleuse)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from holepunch.signaling.singleuse import SingleUseTokens


class SingleUseTokensTests(SynchronousTestCase):
    def test_claim_once(self) -> None:
        """A token is claimed by the first connection; a second claim is refused."""
        tokens = SingleUseTokens()
        self.assertTrue(tokens.claim("t1"))
        self.assertFalse(tokens.claim("t1"))
        self.assertTrue(tokens.claim("t2"))
        self.assertEqual((len(tokens), "t1" in tokens, "t2" in tokens), (2, True, True))

    def test_release(self) -> None:
        """A released token can be claimed again; releasing one nobody holds is harmless."""
        tokens = SingleUseTokens()
        tokens.claim("t1")
        tokens.release("t1")
        tokens.release("never-held")
        self.assertEqual(len(tokens), 0)
        self.assertTrue(tokens.claim("t1"))

    def test_swap(self) -> None:
        """Renewing swaps the held token for the fresh one: the old one is free again."""
        tokens = SingleUseTokens()
        tokens.claim("old")
        self.assertTrue(tokens.swap("old", "fresh"))
        self.assertEqual(("old" in tokens, "fresh" in tokens), (False, True))
        self.assertTrue(tokens.claim("old"))

    def test_swap_to_a_held_token(self) -> None:
        """A fresh token another connection holds is refused; the renewer keeps its own."""
        tokens = SingleUseTokens()
        tokens.claim("mine")
        tokens.claim("theirs")
        self.assertFalse(tokens.swap("mine", "theirs"))
        self.assertEqual(("mine" in tokens, "theirs" in tokens, len(tokens)), (True, True, 2))
        tokens.release("theirs")
        self.assertNotIn("theirs", tokens)

    def test_swap_to_the_same_token(self) -> None:
        """Renewing with the token already held is allowed and changes nothing."""
        tokens = SingleUseTokens()
        tokens.claim("mine")
        self.assertTrue(tokens.swap("mine", "mine"))
        self.assertEqual(("mine" in tokens, len(tokens)), (True, 1))
