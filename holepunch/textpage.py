"""The plain-text index page the signaling server and the daemon's HTTP port show at ``/``."""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request

from holepunch.version import __version__


def index_text(name: str, body: str) -> bytes:
    """The page: ``NAME VERSION``, a blank line, then ``body``; UTF-8."""
    return f"{name} {__version__}\n\n{body}".encode()


def render_text(request: Request, body: bytes) -> bytes:
    """Answer ``request`` with ``body`` as ``text/plain``."""
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return body


class TextPage(Resource):
    """A leaf that answers GET (and HEAD) with a fixed plain-text body."""

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Request) -> bytes:
        return render_text(request, self.body)


__all__ = ["TextPage", "index_text", "render_text"]
