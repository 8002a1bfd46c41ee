"""The Playground's HTTP server: the standard library's, JSON over loopback.

Why the standard library (``http.server.ThreadingHTTPServer``) and not Starlette/uvicorn: the
page is one local client polling a few kilobytes per frame (measured: about 1 ms a request on
loopback), so nothing asynchronous is needed, and fnn keeps its four dependencies.

Safety: it binds to 127.0.0.1 unless ``--host`` says otherwise; with a loopback address it
answers only requests whose ``Host`` is that address (so a web page elsewhere cannot reach it
through DNS rebinding); it serves only the files shipped in ``fnn/playground/static`` (a
fixed list read at start) and its own JSON; the only file it ever writes to the user is the
export, as a download; bodies are bounded (JSON 64 KiB, CSV 1 MiB) and POSTs must carry the
right content type (``application/json`` or ``text/csv``, which a cross-site form cannot send
without the browser asking first, and no CORS header answers it). A body is read in full
(within ``Handler.body_timeout`` seconds, else 408) before the session's lock is taken, so a
slow client delays only itself; an answer given without reading a body closes the connection,
so that body is never taken for a second request.
"""

from __future__ import annotations

import argparse
import importlib.resources
import ipaddress
import json
import signal
import socket
import sys
import threading
import time
import traceback
import webbrowser
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fnn.playground import _session

MAX_JSON_BYTES = 64 * 1024
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".png": "image/png",
                ".svg": "image/svg+xml"}

Route = tuple[Callable[..., None], Callable[[], object] | None, bool]
"""``(answer, read, locked)``: ``read`` (or None: no body) reads and checks the body before
the lock is taken and its value is passed to ``answer``; ``locked``: whether ``answer`` uses
the session (and so runs under the server's lock)."""


class HTTPError(Exception):
    """An answer other than 200, with a message for the page."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file shipped in ``fnn/playground/static``, read once: nothing else is served."""
    files = {}
    for entry in (importlib.resources.files("fnn.playground") / "static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PlaygroundServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` holding one ``Session``."""

    daemon_threads = False
    """``server_close`` joins the handler threads, so that the interpreter never finalizes
    with one still running. With daemon threads the process was aborted at exit after Ctrl-C
    in 2 of about 70 tries ("terminate called after throwing an instance of ''", "FATAL:
    exception not rethrown": what glibc prints when a thread ended by the interpreter's
    finalization was inside C++ code). A request in flight finishes first (a frame takes
    well under a second); an idle kept-alive connection ends after ``Handler.timeout``."""

    def __init__(self, host: str, port: int, session: _session.Session | None = None):
        super().__init__((host, port), Handler)
        self.session = session or _session.Session()
        self.lock = threading.Lock()
        self.static = _static_files()
        port = self.server_address[1]
        self.loopback = _is_loopback(host)
        self.allowed_hosts = {f"{name}:{port}" for name in
                              ("127.0.0.1", "localhost", "[::1]", host)}

    def handle_error(self, request, client_address):
        """A client that went away mid-response (a closed tab, a dropped connection) is not
        worth a traceback on the terminal; anything else is printed as ``socketserver`` does."""
        if isinstance(sys.exc_info()[1], ConnectionError):  # reset, broken pipe, aborted
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host = self.server_address[0]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{self.server_address[1]}/"


class Handler(BaseHTTPRequestHandler):
    """Routes: the page and its files, and the JSON API under ``/api/``."""

    server: PlaygroundServer
    protocol_version = "HTTP/1.1"
    timeout = 3  # seconds a kept-alive connection may sit idle; the browser opens another
    body_timeout = 10.0  # seconds a request's whole body may take to arrive (else 408)
    body_read = False  # whether this request's body was read in full
    linger = False  # whether the connection closes with a body left unread (see finish)
    linger_bytes, linger_seconds = 1 << 22, 2.0  # what finish drains of it, at most
    disable_nagle_algorithm = True  # headers and body go out as they are written

    def log_message(self, format, *args):
        pass  # one request per frame: the terminal stays quiet

    # --------------------------------------------------------------- plumbing

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self._unread_body():
            self.send_header("Connection", "close")
            self.linger = True
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value, status: int = 200):
        self._send(status, json.dumps(value, allow_nan=False).encode(),
                   "application/json")

    def finish(self):
        """Close the connection; after an answer that left a body unread, first drain what the
        client still sends (at most ``linger_bytes`` or ``linger_seconds``): a socket closed
        with unread bytes is reset, and the client, still sending, would lose the answer."""
        super().finish()
        if not self.linger:
            return
        deadline = time.monotonic() + self.linger_seconds
        try:
            self.connection.shutdown(socket.SHUT_WR)  # the answer is complete: say so
            drained = 0
            while drained < self.linger_bytes and time.monotonic() < deadline:
                self.connection.settimeout(max(deadline - time.monotonic(), 1e-3))
                chunk = self.connection.recv(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:  # reset or timed out: nothing more to wait for
            pass

    def _unread_body(self) -> bool:
        """Whether the request may carry bytes after its headers that were not read: they
        must never be taken for the next request on the connection (request smuggling: a
        refused cross-site POST whose body is a complete second request), so the answer then
        closes the connection."""
        if self.body_read:
            return False
        length = self.headers.get("Content-Length", "0").strip()
        return (self.command not in ("GET", "HEAD") or length != "0"
                or "Transfer-Encoding" in self.headers)

    def _body(self, content_type: str, limit: int) -> bytes:
        """The request's body, checked (type, length) and read in full within
        ``body_timeout`` seconds in all (``HTTPError`` otherwise); never under the lock."""
        given = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if given != content_type:
            raise HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                            f"expected Content-Type {content_type}, got {given or 'none'}")
        if "Transfer-Encoding" in self.headers:
            raise HTTPError(HTTPStatus.LENGTH_REQUIRED,
                            "Transfer-Encoding is not supported: send a Content-Length")
        length = self.headers.get("Content-Length", "").strip()
        if not (length.isascii() and length.isdigit()):
            raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        if int(length) > limit:
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"the body has {int(length)} bytes; the limit is {limit}")
        raw = self._read(int(length), time.monotonic() + self.body_timeout)
        self.body_read = True
        return raw

    def _read(self, length: int, deadline: float) -> bytes:
        """``length`` bytes of the body, or ``HTTPError`` 408 at ``deadline`` (the client is
        too slow or stopped sending) or 400 (it closed the connection first)."""
        chunks, left = [], length
        try:
            while left:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:
                    raise HTTPError(HTTPStatus.BAD_REQUEST, f"the body ended after "
                                    f"{length - left} of its {length} bytes")
                chunks.append(chunk)
                left -= len(chunk)
        except TimeoutError:
            raise HTTPError(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within "
                            f"{self.body_timeout} s ({length - left} of {length} bytes)"
                            ) from None
        finally:
            self.connection.settimeout(self.timeout)
        return b"".join(chunks)

    def _json_body(self) -> dict:
        """The body as a JSON object (``HTTPError`` 400 if it is not one)."""
        raw = self._body("application/json", MAX_JSON_BYTES)
        try:
            value = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError, int digits limit
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {err}") from None
        except RecursionError:
            raise HTTPError(HTTPStatus.BAD_REQUEST,
                            "the body is not JSON this server reads: nested too deeply"
                            ) from None
        if not isinstance(value, dict):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return value

    def _csv_body(self) -> str:
        """The body as CSV text (``ValueError`` if it is not UTF-8)."""
        raw = self._body("text/csv", _session.MAX_UPLOAD_BYTES)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the CSV must be UTF-8 text") from None

    def _handle(self, routes: dict[str, Route]):
        """Answer one request by ``routes``; any error is answered as JSON ``{"error": ...}``
        (a bug's traceback is printed too) and the server keeps serving."""
        self.body_read = False
        try:
            self._route(routes)
        except HTTPError as err:
            self._json({"error": str(err)}, err.status)
        except ValueError as err:  # a setting, an example index or a CSV refused by name
            self._json({"error": str(err)}, HTTPStatus.BAD_REQUEST)
        except Exception as err:  # a bug: tell the page, keep serving, print the traceback
            traceback.print_exc()
            self._json({"error": f"internal error: {type(err).__name__}: {err}"},
                       HTTPStatus.INTERNAL_SERVER_ERROR)

    def _route(self, routes: dict[str, Route]):
        """Check the Host, find the route, read its body outside the lock (a slow client
        delays only itself), then answer, under the lock if the route uses the session."""
        if self.server.loopback and self.headers.get("Host") not in self.server.allowed_hosts:
            raise HTTPError(HTTPStatus.FORBIDDEN, "unexpected Host header")
        path = self.path.split("?", 1)[0]
        if path not in routes:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        answer, read, locked = routes[path]
        args = () if read is None else (read(),)
        if not locked:
            answer(*args)
            return
        with self.server.lock:
            answer(*args)

    # --------------------------------------------------------------- routes

    def do_GET(self):
        """The page, its files (no lock: they are fixed bytes), the data set, the export."""
        routes = {"/": (lambda: self._static("index.html"), None, False),
                  "/api/dataset": (lambda: self._json(self._dataset()), None, True),
                  "/api/export.npz": (self._export, None, True),
                  "/api/snippet": (self._snippet, None, True)}
        for name in self.server.static:
            routes[f"/static/{name}"] = (lambda name=name: self._static(name), None, False)
        self._handle(routes)

    do_HEAD = do_GET

    def do_POST(self):
        """The API's updates: each body is read and parsed before the session is locked."""
        self._handle({"/api/step": (self._step, self._json_body, True),
                      "/api/config": (self._config, self._json_body, True),
                      "/api/reset": (self._reset, self._json_body, True),
                      "/api/upload": (self._upload, self._csv_body, True)})

    def _static(self, name: str):
        body, content_type = self.server.static[name]
        self._send(200, body, content_type)

    def _dataset(self) -> dict:
        s = self.server.session
        return {**s.dataset(), "options": OPTIONS, "snippet": s.snippet()}

    def _frame(self, example) -> dict:
        if example is not None and (isinstance(example, bool) or not isinstance(example, int)):
            raise ValueError(f"example must be a point index or null, got {example!r}")
        return self.server.session.frame(example)

    def _step(self, request: dict):
        steps = request.get("steps", 0)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 100:
            raise ValueError(f"steps must be an integer in [0, 100], got {steps!r}")
        self.server.session.step(steps)
        self._json(self._frame(request.get("example")))

    def _rebuilt(self, what: str, example=None):
        self._json({"rebuilt": what, "dataset": self._dataset(), "frame": self._frame(example)})

    def _config(self, request: dict):
        session = self.server.session
        what = session.configure(request.get("settings", {}))
        example = request.get("example")
        if isinstance(example, int) and not 0 <= example < session.y.size:
            example = 0  # new data without that point: the page selects the first
        self._rebuilt(what, example)

    def _reset(self, request: dict):
        self.server.session.reset()
        self._rebuilt("net")

    def _upload(self, text: str):
        self.server.session.set_upload(text)
        self._rebuilt("data")

    def _export(self):
        self._send(200, self.server.session.export_npz(), "application/octet-stream",
                   {"Content-Disposition": 'attachment; filename="fnn-playground.npz"'})

    def _snippet(self):
        self._send(200, self.server.session.snippet().encode(), "text/plain; charset=utf-8")


OPTIONS = {
    "datasets": list(_session.DATASETS),
    "features": list(_session.FEATURES),
    "activations": list(_session.ACTIVATIONS),
    "losses": _session.LOSSES,
    "optimizers": sorted(_session.OPTIMIZERS),
    "feedback": list(_session.fnn.FEEDBACK_RULES),
    "max_layers": _session.MAX_LAYERS,
    "max_width": _session.MAX_WIDTH,
    "max_upload_bytes": _session.MAX_UPLOAD_BYTES,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``fnn playground [--host H] [--port P] [--no-browser]``: serve until Ctrl-C or SIGTERM.

    Returns:
      The exit code: 0 after Ctrl-C or SIGTERM (printing "fnn playground: stopped"), 2 for
      bad options, 1 if the port cannot be bound.
    """
    parser = argparse.ArgumentParser(
        prog="fnn playground",
        description="Serve fnn's Playground: train a small network on 2-D data in the "
                    "browser, with every neuron's delta from fnn's own backprop.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only; "
                             "another address lets other machines use the page)")
    parser.add_argument("--port", type=int, default=8765,
                        help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--no-browser", action="store_true",
                        help="do not open the page in a web browser")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        server = PlaygroundServer(args.host, args.port)
    except OSError as err:
        print(f"fnn playground: cannot listen on {args.host}:{args.port}: {err}",
              file=sys.stderr)
        return 1
    if not server.loopback:
        print(f"fnn playground: listening on {args.host}, not only on this machine: anyone "
              "who can reach it can use the page", file=sys.stderr)
    _serve(server, open_browser=not args.no_browser)
    return 0


def _serve(server: PlaygroundServer, open_browser: bool) -> None:
    """Say where the page is, open it if asked, and serve until Ctrl-C or SIGTERM (handled as
    Ctrl-C from before the first line is printed), then close the server.

    The KeyboardInterrupt lands in the main thread, which only waits for connections: the
    handler threads, which run JAX, are not interrupted (``server_close`` joins them)."""
    previous = None
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM"):
        previous = signal.signal(signal.SIGTERM, _interrupt_main)
    try:
        print(f"fnn playground: serving on {server.url} (Ctrl-C stops it)", flush=True)
        if open_browser:
            threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
        server.serve_forever()
    except KeyboardInterrupt:
        print("fnn playground: stopped", flush=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        server.server_close()


def _interrupt_main(signum, frame) -> None:
    """SIGTERM's handler while serving: stop as Ctrl-C does."""
    raise KeyboardInterrupt
