"""A loopback HTTP server that answers recorded ``/metrics`` pages (404 for any other path)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_pages(pages: dict[str, str]) -> ThreadingHTTPServer:
    """Serve ``pages`` (path -> Prometheus text, changeable while it runs) on 127.0.0.1; call ``shutdown()``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            text = pages.get(self.path)
            body = (text or "not found").encode()
            self.send_response(200 if text is not None else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
