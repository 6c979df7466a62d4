#!/usr/bin/env python3
"""A deliberately slow HTTPS webhook receiver for the isolation scenario (stdlib only).

GET ?validationToken=X answers X at once (so kzhook's handshake passes); every POST is read in
full, then answered 200 after --delay seconds. Keep-alive (HTTP/1.1), one thread per connection.
Prints "ready <port>" on stdout once listening.
"""
import argparse
import http.server
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 5.0
    count = 0
    lock = threading.Lock()

    def log_message(self, fmt, *args):  # quiet
        pass

    def _answer(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        self._answer(q.get("validationToken", [""])[0].encode())

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        time.sleep(self.delay)
        with Handler.lock:
            Handler.count += 1
        self._answer(b"")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--delay", type=float, default=5.0)
    a = ap.parse_args()
    Handler.delay = a.delay
    srv = Server(("127.0.0.1", a.port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("ready", a.port, flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
