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
without the browser asking first, and no CORS header answers it).
"""

from __future__ import annotations

import argparse
import importlib.resources
import ipaddress
import json
import sys
import threading
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
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value, status: int = 200):
        self._send(status, json.dumps(value, allow_nan=False).encode(),
                   "application/json")

    def _body(self, content_type: str, limit: int) -> bytes:
        given = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if given != content_type:
            raise HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                            f"expected Content-Type {content_type}, got {given or 'none'}")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required") from None
        if not 0 <= length <= limit:
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"the body has {length} bytes; the limit is {limit}")
        return self.rfile.read(length)

    def _json_body(self) -> dict:
        raw = self._body("application/json", MAX_JSON_BYTES)
        try:
            value = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {err}") from None
        if not isinstance(value, dict):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return value

    def _handle(self, routes: dict[str, Callable[[], None]]):
        try:
            if self.server.loopback and self.headers.get("Host") not in self.server.allowed_hosts:
                raise HTTPError(HTTPStatus.FORBIDDEN, "unexpected Host header")
            path = self.path.split("?", 1)[0]
            route = routes.get(path)
            if route is None:
                raise HTTPError(HTTPStatus.NOT_FOUND, f"no such page: {path}")
            with self.server.lock:
                route()
        except HTTPError as err:
            self._json({"error": str(err)}, err.status)
        except ValueError as err:  # a setting, an example index or a CSV refused by name
            self._json({"error": str(err)}, HTTPStatus.BAD_REQUEST)
        except Exception as err:  # a bug: tell the page, keep serving, print the traceback
            traceback.print_exc()
            self._json({"error": f"internal error: {type(err).__name__}: {err}"},
                       HTTPStatus.INTERNAL_SERVER_ERROR)

    # --------------------------------------------------------------- routes

    def do_GET(self):
        routes = {"/": lambda: self._static("index.html"),
                  "/api/dataset": lambda: self._json(self._dataset()),
                  "/api/export.npz": self._export,
                  "/api/snippet": self._snippet}
        for name in self.server.static:
            routes[f"/static/{name}"] = lambda name=name: self._static(name)
        self._handle(routes)

    do_HEAD = do_GET

    def do_POST(self):
        self._handle({"/api/step": self._step, "/api/config": self._config,
                      "/api/reset": self._reset, "/api/upload": self._upload})

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

    def _step(self):
        request = self._json_body()
        steps = request.get("steps", 0)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 100:
            raise ValueError(f"steps must be an integer in [0, 100], got {steps!r}")
        self.server.session.step(steps)
        self._json(self._frame(request.get("example")))

    def _rebuilt(self, what: str, example=None):
        self._json({"rebuilt": what, "dataset": self._dataset(), "frame": self._frame(example)})

    def _config(self):
        request = self._json_body()
        session = self.server.session
        what = session.configure(request.get("settings", {}))
        example = request.get("example")
        if isinstance(example, int) and not 0 <= example < session.y.size:
            example = 0  # new data without that point: the page selects the first
        self._rebuilt(what, example)

    def _reset(self):
        self._json_body()
        self.server.session.reset()
        self._rebuilt("net")

    def _upload(self):
        raw = self._body("text/csv", _session.MAX_UPLOAD_BYTES)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the CSV must be UTF-8 text") from None
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
    """``fnn playground [--host H] [--port P] [--no-browser]``: serve until Ctrl-C.

    Returns:
      The exit code: 0 after Ctrl-C, 2 for bad options, 1 if the port cannot be bound.
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
    print(f"fnn playground: serving on {server.url} (Ctrl-C stops it)", flush=True)
    if not args.no_browser:
        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("fnn playground: stopped", flush=True)
    finally:
        server.server_close()
    return 0
