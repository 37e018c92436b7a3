"""The client's own HTTP endpoint: ``GET /health`` answers 200 ``{"status":"healthy"}``."""

from __future__ import annotations

from mgfast.http import responses
from mgfast.http.responses import Response
from mgfast.http.server_protocol import Request

HEALTHY = Response(200, responses.HEALTHY_BODY, b"application/json")


class HealthApp:
    """An ``App`` for ``HttpServerProtocol``: health only, as upstream's client."""

    def handle(self, request: Request) -> Response:
        path = request.path.partition(b"?")[0]
        if path != b"/health":
            return responses.text(404, f"no such path {responses.quote(path)}; "
                                       f"the client serves GET /health")
        if request.method not in (b"GET", b"HEAD"):
            return Response(405, b"use GET\n", headers=((b"allow", b"GET"),))
        return HEALTHY
