"""What a web page the user happens to open may not do with the studio.

A browser lets any page send a "simple" cross-origin POST (text/plain or a form, no preflight) to 127.0.0.1: it
cannot read the answer, but the job runs, options change, models unload. And a page whose DNS name is switched to
127.0.0.1 (DNS rebinding) is same-origin with the studio and reads everything. So:
- a request that changes something (any method but GET, HEAD, OPTIONS) that a browser marks with another origin
  than the studio's own is refused (clients outside a browser send no Origin and are unaffected);
- a studio bound to this machine answers only to this machine's names (localhost, 127.0.0.1, [::1]).
Starlette's TrustedHostMiddleware does the second only, and answers in plain text where the APIs' clients read JSON.
"""

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_loopback(host: str) -> bool:
    return host.strip("[]").lower() in LOOPBACK_NAMES


def host_name(netloc: str) -> str:
    """'[::1]:7860' -> '::1', 'localhost:7860' -> 'localhost'."""
    if netloc.startswith("["):
        return netloc[1:].split("]")[0].lower()
    return netloc.rsplit(":", 1)[0].lower() if netloc.count(":") == 1 else netloc.lower()


def origin_netloc(origin: str) -> str:
    return origin.split("://", 1)[-1].rstrip("/").lower()


class RequestGuard:
    """ASGI middleware: refuses with 403 and a sentence (as JSON `detail`, which A1111 and FastAPI clients show)."""

    def __init__(self, app: ASGIApp, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(scope) if scope["type"] in ("http", "websocket") else None
        if refusal and scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": refusal[:120]})
        elif refusal:
            await JSONResponse({"detail": refusal, "error": "Forbidden"}, status_code=403)(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.loopback_only and not is_loopback(host_name(host)):
            return (f"This studio is served to this machine only, at 127.0.0.1 or localhost, not as {host!r} "
                    "(start it with --listen to serve other names).")
        origin = headers.get("origin")
        changes = scope["type"] == "websocket" or scope.get("method") not in SAFE_METHODS  # a websocket reads too
        if changes and origin is not None and origin_netloc(origin) != host.lower():
            return (f"A web page from {origin} may not use this studio: only its own page (at {host}) and clients "
                    "outside a browser may.")
        return None
