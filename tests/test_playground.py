"""The Playground's server side: settings, CSV upload, deltas, export, HTTP safety, Ctrl-C.

The page itself is tested in a real browser in test_playground_browser.py. Everything here
shares one Session of the default 2-4-2 tanh net, so each function compiles once.
"""

import http.client
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from _browser import background

import fnn
from fnn.playground import PlaygroundServer, Session, _session, parse_csv

backprop = jax.jit(fnn.backprop)


@pytest.fixture(scope="module")
def session():
    return Session()


@pytest.fixture(scope="module")
def server():
    with background(PlaygroundServer("127.0.0.1", 0)) as srv:
        yield srv


def request(server, method, path, body=None, headers=None):
    """``(status, headers, body bytes)`` of one request to the test server."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    conn.request(method, path, body, headers or {})
    response = conn.getresponse()
    out = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return out


def post_json(server, path, value):
    status, _, body = request(server, "POST", path, json.dumps(value),
                              {"Content-Type": "application/json"})
    return status, json.loads(body)


# ----------------------------------------------------------------------------- the session


def test_defaults_are_the_playgrounds(session):
    c = session.config
    assert (c.dataset, c.features, c.hidden, c.activation, c.learning_rate) == (
        "circle", ("x1", "x2"), (4, 2), "tanh", 0.03)
    assert session.net.layer_sizes == (2, 4, 2, 2)
    assert session.points.shape == (500, 2) and session.y.shape == (500,)
    assert np.intersect1d(session.train_idx, session.test_idx).size == 0
    assert session.train_idx.size + session.test_idx.size == 500


@pytest.mark.parametrize("changes, match", [
    ({"hidden": [4] * 7}, "at most 6"),
    ({"hidden": [9]}, r"hidden width must be in \[1, 8\]"),
    ({"learning_rate": -1}, "learning_rate must be in"),
    ({"noise": float("nan")}, "noise must be in"),
    ({"activation": "swish"}, "activation must be one of"),
    ({"features": []}, "features must be a non-empty list"),
    ({"features": ["x1", "x3"]}, "features must be one of"),
    ({"batch_size": 2.5}, "batch_size must be an integer"),
    ({"feedback": "hebbian"}, "feedback must be one of"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"colour": "red"}, r"unknown settings \['colour'\]"),
    ({"learning_rate": 10**400}, r"learning_rate must be in \[1e-05, 10.0\], got an integer "
                                 "of 401 digits"),
    ({"noise": -10**400}, r"noise must be in \[0.0, 0.5\], got an integer of 401 digits"),
    ({"points": float("inf")}, r"points must be in \[50, 2000\], got inf"),
    ({"optimizer": []}, r"optimizer must be one of .*, got \[\]"),
    ({"loss": [1]}, r"loss must be one of \['cce', 'mse'\], got \[1\]"),
    ({"features": [["x1"]]}, r"features must be one of .*, got \['x1'\]"),
])
def test_bad_settings_are_refused_by_name(changes, match):
    with pytest.raises(ValueError, match=match):
        _session.validate(changes, _session.Config())


def test_what_a_change_rebuilds(session):
    before = session.params
    assert session.configure({"learning_rate": 0.1, "l2": 0.001}) == "none"
    assert session.params is before
    assert session.configure({"feedback": "sign"}) == "none"
    assert session.net.feedback == "sign" and session.params is before
    assert session.configure({"optimizer": "adam"}) == "optimizer"
    assert session.params is before
    assert session.configure({"hidden": [3]}) == "net"
    assert session.net.layer_sizes == (2, 3, 2)
    assert session.configure({"noise": 0.2}) == "data"
    session.configure({"feedback": "backprop", "optimizer": "sgd", "hidden": [4, 2],
                       "noise": 0.0, "learning_rate": 0.03, "l2": 0.0})


def test_deltas_are_fnn_backprops_bit_for_bit(session):
    session.step(20)
    i = int(session.train_idx[3])
    bp = backprop(session.net, session.params, session.x_all[i:i + 1], session.y[i:i + 1])
    served = json.loads(json.dumps(session.frame(i)["deltas"]))  # through JSON, as served
    for l, values in enumerate(served, start=1):
        np.testing.assert_array_equal(np.asarray(values, np.float32), bp.delta[l][0])
        assert all(float(np.float32(v)) == v for v in values)  # float32 values, exactly
    mean = session.deltas(None)
    bp = backprop(session.net, session.params, session.x_all[session.last_batch],
                  session.y[session.last_batch])
    np.testing.assert_allclose(mean[-1], np.asarray(bp.delta[-1]).mean(0), rtol=1e-6)


def test_frame_serves_fnns_numbers(session):
    frame = session.frame(0)
    tr = session.train_idx
    loss = jax.jit(fnn.loss)(session.net, session.params, session.x_all[tr], session.y[tr])
    np.testing.assert_allclose(frame["train_loss"], loss, rtol=1e-5)
    norms = jax.jit(fnn.per_example_grad_norms)(session.net, session.params, session.x_all[tr],
                                       session.y[tr])
    np.testing.assert_allclose(frame["grad_norms"], norms, rtol=1e-5)
    fence = np.percentile(norms, 75) + 1.5 * np.subtract(*np.percentile(norms, [75, 25]))
    assert sorted(frame["outliers"]) == sorted(tr[np.asarray(norms) > fence].tolist())
    n_units = sum(session.net.layer_sizes[1:])
    assert len(_decode(frame["neurons"])) == n_units * _session.NEURON_GRID ** 2
    p1 = jax.jit(fnn.forward)(session.net, session.params, session.x_all)[:, 1]
    np.testing.assert_allclose(frame["points_p1"], p1, rtol=1e-6)
    assert frame["step"] == session.step_count


def test_a_diverged_run_is_served_as_null_not_as_a_number(session):
    session.configure({"learning_rate": 10.0, "l2": 10.0})  # W <- W - 10 (g + 10 W): blows up
    session.step(30)
    frame = json.loads(json.dumps(session.frame(0), allow_nan=False))  # strict JSON
    assert frame["train_loss"] is None and frame["test_loss"] is None
    assert all(v is None for d in frame["deltas"] for v in d)
    assert all(v is None for v in frame["grad_norms"]) and frame["outliers"] == []
    assert frame["weights"][0]["W"][0][0] is None
    session.configure({"learning_rate": 0.03, "l2": 0.0})
    session.reset()
    assert np.isfinite(session.frame(0)["train_loss"])


def _decode(b64):
    import base64
    return np.frombuffer(base64.b64decode(b64), np.uint8)


def test_input_features():
    points = np.array([[1.0, 2.0], [-0.5, 3.0]], np.float32)
    x = _session.input_features(points, ("x1", "x2^2", "x1*x2", "sin(x2)"))
    np.testing.assert_allclose(x, [[1, 4, 2, np.sin(2)], [-0.5, 9, -1.5, np.sin(3)]],
                               rtol=1e-6)


def test_export_loads_back_and_the_snippet_replays_the_run(session, tmp_path, monkeypatch):
    s = session
    s.configure({"optimizer": "adam", "l2": 0.001})
    s.reset()  # new initial weights: a run with these settings from its first step
    s.step(37)
    path = tmp_path / "fnn-playground.npz"
    path.write_bytes(s.export_npz())
    with np.load(path) as f:
        params = tuple({"W": f[f"W{l}"], "b": f[f"b{l}"]} for l in (1, 2, 3))
        x = f["x"]
        assert json.loads(str(f["config"]))["optimizer"] == "adam"
        assert int(f["step"]) == 37
    np.testing.assert_array_equal(fnn.forward(s.net, params, x),
                                  fnn.forward(s.net, s.params, s.x_all))
    out = io.StringIO()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdout", out)
    exec(s.snippet(), {})  # the snippet shown on the page, as a user would paste it
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("test accuracy ")
    assert lines[1] == "replayed 37 updates; largest difference to the export: 0.0"
    s.configure({"optimizer": "sgd", "l2": 0.0})


def test_snippet_says_when_the_settings_changed_during_the_run(session):
    session.reset()
    session.step(1)
    assert "Settings changed" not in session.snippet()
    session.configure({"learning_rate": 0.1})
    assert "Settings changed during this run" in session.snippet()
    session.configure({"learning_rate": 0.03})


CSV_OK = "x1,x2,label\n0,0,0\n1,1,1\n-1,-1,0\n2,2,1\n"


def test_csv_upload_is_parsed():
    points, y = parse_csv(CSV_OK)
    np.testing.assert_array_equal(parse_csv("\ufeff" + CSV_OK)[0], points)  # a BOM, a header
    np.testing.assert_array_equal(points, [[0, 0], [1, 1], [-1, -1], [2, 2]])
    np.testing.assert_array_equal(y, [0, 1, 0, 1])
    _, y = parse_csv("1,2,-1\n3,4,1\n5,6,1\n7,8,-1\n")  # the Playground's -1/1 labels
    np.testing.assert_array_equal(y, [0, 1, 1, 0])


@pytest.mark.parametrize("text, match", [
    ("x1,x2,label\n0,0,0\n1,1,1\n", "expected 4 to 10000 data rows, found 2"),
    ("0,0,0\n1,1,1\n2,2,0\n3,3\n", r"row 4: expected 3 columns \(x1, x2, label\), found 2"),
    ("0,0,0\n1,1,1\n2,two,0\n3,3,1\n", "row 3: not a number"),
    ("0,0,0\n1,nan,1\n2,2,0\n3,3,1\n", "row 2: values must be finite"),
    ("0,0,0\n1,inf,1\n2,2,0\n3,3,1\n", "row 2: values must be finite"),
    ("0,0,0\n1,1,2\n2,2,0\n3,3,1\n", "row 2: the label must be 0 or 1"),
    ("0,0,1\n1,1,1\n2,2,1\n3,3,1\n", "both classes"),
    ("0,0,0,0\n" * 5, "expected 3 columns"),
    ("0,0,0\n" * 10_001, "expected 4 to 10000 data rows, found 10001"),
    ("0," * (1 << 20), "larger than 1048576 bytes"),
    ("x1,x2,label\n1e300,0,0\n1,1,0\n2,2,1\n3,3,1\n",
     r"row 2, column x1: 1e\+300 is too large for float32 \(at most 3.403e\+38 in magnitude\)"),
    ("0,0,0\n1,1,1\n2,-4e38,0\n3,3,1\n", "row 3, column x2: -4e\\+38 is too large for float32"),
])
def test_bad_csv_is_refused_by_name(text, match):
    with pytest.raises(ValueError, match=match):
        parse_csv(text)


# ----------------------------------------------------------------------------- HTTP


def test_the_page_and_its_files_are_served(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = body.decode()
    for name in ("/static/playground.js", "/static/playground.css"):
        assert name in html
        status, _, _ = request(server, "GET", name)
        assert status == 200
    assert "http://" not in html and "https://" not in html  # nothing from the network


@pytest.mark.parametrize("path", ["/static/../_server.py", "/static/%2e%2e/_server.py",
                                  "/../../etc/passwd", "/static/", "/api/nothing",
                                  "/fnn/playground/_session.py"])
def test_nothing_else_is_served(server, path):
    status, _, body = request(server, "GET", path)
    assert status == 404, path
    assert "error" in json.loads(body)


def test_foreign_host_header_is_refused(server):
    status, _, _ = request(server, "GET", "/api/dataset", headers={"Host": "evil.example:80"})
    assert status == 403


def test_posts_need_their_content_type_and_a_bounded_body(server):
    status, _, _ = request(server, "POST", "/api/step", '{"steps": 1}',
                           {"Content-Type": "text/plain"})
    assert status == 415
    status, _, _ = request(server, "POST", "/api/upload", CSV_OK,
                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    status, _, _ = request(server, "POST", "/api/upload", "0,0,0\n" * 200_000,
                           {"Content-Type": "text/csv"})
    assert status == 413
    status, _, _ = request(server, "POST", "/api/step", "{not json",
                           {"Content-Type": "application/json"})
    assert status == 400


def test_api_round_trip(server):
    status, answer = post_json(server, "/api/step", {"steps": 3, "example": 5})
    assert status == 200 and answer["example"] == 5 and answer["step"] >= 3
    status, answer = post_json(server, "/api/step", {"steps": 101})
    assert status == 400 and "steps must be an integer in [0, 100]" in answer["error"]
    status, answer = post_json(server, "/api/step", {"steps": 0, "example": 10**6})
    assert status == 400 and "example must be a point index" in answer["error"]
    status, answer = post_json(server, "/api/config", {"settings": {"hidden": [9]}})
    assert status == 400 and "hidden width" in answer["error"]
    status, answer = post_json(server, "/api/config", {"settings": {"dataset": "upload"}})
    assert status == 400 and "upload a CSV first" in answer["error"]
    status, _, body = request(server, "POST", "/api/upload", "0,0,0\n1,1,nan\n2,2,0\n3,3,1\n",
                              {"Content-Type": "text/csv"})
    assert status == 400 and "row 2: values must be finite" in json.loads(body)["error"]
    status, _, body = request(server, "POST", "/api/upload", CSV_OK,
                              {"Content-Type": "text/csv"})
    answer = json.loads(body)
    assert status == 200 and answer["dataset"]["config"]["dataset"] == "upload"
    assert len(answer["dataset"]["points"]) == 4
    status, headers, body = request(server, "GET", "/api/export.npz")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    with np.load(io.BytesIO(body)) as f:
        assert f["points"].shape == (4, 2)
    status, answer = post_json(server, "/api/config", {"settings": {"dataset": "xor"}})
    assert status == 200 and answer["rebuilt"] == "data"


def test_an_idle_kept_alive_connection_neither_lingers_nor_blocks_closing(session):
    """Handler threads are joined at ``server_close`` (not daemon threads): a client that keeps
    its connection open and silent is dropped after ``Handler.timeout``, so closing the
    server waits for it at most that long, and the server's session is left as it was."""
    from fnn.playground._server import Handler

    srv = PlaygroundServer("127.0.0.1", 0, session=session)
    before = session.config
    with background(srv):
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1],
                                          timeout=Handler.timeout + 5)
        try:
            conn.request("GET", "/api/dataset")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
            start = time.monotonic()
            assert conn.sock.recv(1) == b""  # the server closed the idle connection
            waited = time.monotonic() - start
        finally:
            conn.close()  # on a failure too: server_close would wait for the open one
    closed = time.monotonic() - start
    assert Handler.timeout - 0.5 <= waited < Handler.timeout + 5, waited
    assert closed < Handler.timeout + 5, closed
    assert session.config == before


@pytest.mark.slow
def test_command_line_serves_and_stops_cleanly_on_ctrl_c():
    code = "import sys; from fnn.playground import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", "0", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        line = proc.stdout.readline()
        assert line.startswith("fnn playground: serving on http://127.0.0.1:"), line
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/api/dataset")
        response = conn.getresponse()
        assert response.status == 200 and response.read()
        conn.close()
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "fnn playground: stopped" in out and "Traceback" not in err
    assert time.monotonic() - start < 10


def test_command_line_options():
    from fnn.playground import main
    assert main(["--port", "not-a-number"]) == 2
    busy = PlaygroundServer("127.0.0.1", 0, session=Session.__new__(Session))
    try:
        assert main(["--port", str(busy.server_address[1]), "--no-browser"]) == 1
    finally:
        busy.server_close()


def test_every_page_file_ships_in_the_wheel():
    """``pip install .`` (not editable) copies package data only as pyproject.toml lists it."""
    import ast
    import fnmatch
    import re
    from pathlib import Path

    root = Path(fnn.__file__).resolve().parent.parent
    # (tomllib is Python 3.11+; fnn supports 3.10)
    line = re.search(r'^"fnn.playground" = (\[.*\])$', (root / "pyproject.toml").read_text(),
                     re.MULTILINE)
    patterns = ast.literal_eval(line.group(1))
    static = root / "fnn" / "playground" / "static"
    files = [f"static/{p.name}" for p in static.iterdir()]
    assert sorted(p.name for p in static.iterdir()) == ["index.html", "playground.css",
                                                          "playground.js"]
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_a_client_that_went_away_prints_no_traceback(capsys):
    """A reset or broken connection mid-response is a closed tab, not an error: nothing on
    stderr (seen: a client that closed before reading the dataset's body made the server print
    a ConnectionResetError traceback); any other error is still printed."""
    server = PlaygroundServer("127.0.0.1", 0, session=Session.__new__(Session))
    try:
        for gone in (ConnectionResetError(104, "reset"), BrokenPipeError(32, "pipe")):
            try:
                raise gone
            except ConnectionError:
                server.handle_error(None, ("127.0.0.1", 1))
        assert capsys.readouterr().err == ""
        try:
            raise ValueError("a bug")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 1))
        err = capsys.readouterr().err
        assert "Traceback" in err and "ValueError: a bug" in err
    finally:
        server.server_close()


def test_a_leading_byte_order_mark_does_not_make_the_first_row_a_header():
    """A spreadsheet's UTF-8 BOM before a first data row (no header) used to make that row
    be taken for a header: one point was lost without a word."""
    points, y = parse_csv("\ufeff0.5,0,0\n1,1,1\n-1,-1,0\n2,2,1\n")
    np.testing.assert_array_equal(points, [[0.5, 0], [1, 1], [-1, -1], [2, 2]])
    np.testing.assert_array_equal(y, [0, 1, 0, 1])


# ----------------------------------------------------------------------------- HTTP: hardening


def _dataset(server) -> dict:
    status, _, body = request(server, "GET", "/api/dataset")
    assert status == 200
    return json.loads(body)


def _until_closed(sock) -> bytes:
    """Everything the server sends on ``sock`` until it closes the connection (a reset after
    its answer counts as closed); a timeout (the connection left open) fails the test."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _smuggled(port: int) -> bytes:
    """A complete request that changes the settings: it must never run as a second request
    hidden in a refused request's body."""
    body = json.dumps({"settings": {"learning_rate": 7.5, "hidden": [8, 8, 8]}})
    return (f"POST /api/config HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n{body}").encode()


@pytest.mark.parametrize("outer, status", [
    ("POST /api/step|Content-Type: text/plain;charset=UTF-8|Content-Length: {n}", 415),
    ("POST /api/step|Content-Type: application/json|Host: evil.example|Content-Length: {n}",
     403),
    ("POST /api/nothing|Content-Type: application/json|Content-Length: {n}", 404),
    ("POST /api/step|Content-Type: application/json", 411),
    ("POST /api/step|Content-Type: application/json|Content-Length: 99999999", 413),
    ("POST /api/step|Content-Type: application/json|Transfer-Encoding: chunked", 411),
    ("GET /api/snippet|Content-Length: {n}", 200),
])
def test_an_unread_body_is_never_taken_for_a_second_request(server, outer, status):
    """Request smuggling: the server used to answer a refused POST before reading its body and
    then parse that body as the next request on the kept-alive connection, so a cross-site
    ``text/plain`` POST (no preflight) could change the settings. Now the answer closes the
    connection: one answer, and the settings are as they were."""
    port = server.server_address[1]
    before = _dataset(server)["config"]
    inner = _smuggled(port)
    line, *headers = outer.format(n=len(inner)).split("|")
    if not any(h.startswith("Host:") for h in headers):
        headers.append(f"Host: 127.0.0.1:{port}")
    head = f"{line} HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + inner)
        data = _until_closed(sock)
    assert data.startswith(f"HTTP/1.1 {status} ".encode()), data[:200]
    assert data.count(b"HTTP/1.1 ") == 1, data
    assert b"\r\nConnection: close\r\n" in data
    assert _dataset(server)["config"] == before


def _trickle(sock, seconds: float) -> tuple[bytes, bool]:
    """Send one byte every 0.2 s until the server answers and closes, or ``seconds`` pass:
    ``(what it sent back, whether it closed the connection)``."""
    data, end = b"", time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if select.select([sock], [], [], 0.2)[0]:
                while chunk := sock.recv(65536):
                    data += chunk
                return data, True
            sock.sendall(b" ")
    except ConnectionError:  # closed while a byte was on its way: a reset
        return data, True
    return data, False


def _partial_post(port: int) -> socket.socket:
    """A connection that sent a POST's headers and 1 of its 100 body bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST /api/step HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                 "application/json\r\nContent-Length: 100\r\n\r\n{".encode())
    return sock


def test_a_slow_body_delays_no_other_client_and_ends_in_408(server, monkeypatch, capsys):
    """A client trickling its body one byte at a time used to hold the session's lock (the
    body was read under it, with a timeout per read only): every other request, the page's
    static files too, waited for as long as it kept trickling. Now the body is read before
    the lock, within ``body_timeout`` in all; the others are answered meanwhile."""
    from fnn.playground._server import Handler

    monkeypatch.setattr(Handler, "body_timeout", 1.5, raising=False)
    sock = _partial_post(server.server_address[1])
    time.sleep(0.3)  # the server is now waiting for the rest of the body
    trickled = {}
    trickler = threading.Thread(target=lambda: trickled.update(out=_trickle(sock, 20)))
    trickler.start()
    statuses = {}
    paths = ("/static/playground.css", "/", "/api/dataset")
    others = threading.Thread(
        target=lambda: statuses.update({p: request(server, "GET", p)[0] for p in paths}),
        daemon=True)
    others.start()
    others.join(5)
    waited = others.is_alive()
    trickler.join(30)
    sock.close()
    assert not waited, "another client waited for the trickling one"
    assert statuses == dict.fromkeys(paths, 200)
    data, closed = trickled["out"]
    assert closed, "the server kept reading a body trickled for 20 s"
    assert data.startswith(b"HTTP/1.1 408 ") or data == b"", data[:200]
    if data:
        assert b"the body did not arrive within 1.5 s (" in data
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("how, status, message", [
    ("silent", 408, "the body did not arrive within 1.0 s (1 of 100 bytes)"),
    ("half-closed", 400, "the body ended after 1 of its 100 bytes"),
])
def test_a_body_that_stops_is_refused_without_a_traceback(server, monkeypatch, capsys, how,
                                                          status, message):
    """A client that stops sending its body mid-way used to get a 500 with a TimeoutError
    traceback on the server's terminal; now 408 (or 400 if it closed its side), and the
    connection is closed."""
    from fnn.playground._server import Handler

    monkeypatch.setattr(Handler, "body_timeout", 1.0, raising=False)
    before = _dataset(server)["config"]
    with _partial_post(server.server_address[1]) as sock:
        if how == "half-closed":
            sock.shutdown(socket.SHUT_WR)
        data = _until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), data[:200]
    assert json.loads(body) == {"error": message}
    assert "Traceback" not in capsys.readouterr().err
    assert _dataset(server)["config"] == before


@pytest.mark.parametrize("settings, message", [
    ({"learning_rate": 10**400}, "learning_rate must be in [1e-05, 10.0], got an integer of "
                                 "401 digits"),
    ({"noise": 10**400}, "noise must be in [0.0, 0.5], got an integer of 401 digits"),
    ({"optimizer": []}, f"optimizer must be one of {sorted(_session.OPTIMIZERS)}, got []"),
    ({"loss": [1]}, "loss must be one of ['cce', 'mse'], got [1]"),
    ({"features": [["x1"]]}, "features must be one of ['sin(x1)', 'sin(x2)', 'x1', 'x1*x2', "
                             "'x1^2', 'x2', 'x2^2'], got ['x1']"),
])
def test_settings_that_broke_the_checks_are_refused_by_name(server, settings, message,
                                                             capsys):
    """These were answered 500 "internal error" with a traceback (OverflowError from
    math.isfinite, TypeError from an unhashable value): now 400 naming the setting."""
    before = _dataset(server)["config"]
    status, answer = post_json(server, "/api/config", {"settings": settings})
    assert (status, answer) == (400, {"error": message})
    assert _dataset(server)["config"] == before
    assert "Traceback" not in capsys.readouterr().err


def test_a_deeply_nested_body_is_refused_not_a_recursion_error(server, capsys):
    status, _, body = request(server, "POST", "/api/step", "[" * 60_000,
                              {"Content-Type": "application/json"})
    assert (status, json.loads(body)) == (
        400, {"error": "the body is not JSON this server reads: nested too deeply"})
    assert "Traceback" not in capsys.readouterr().err


def test_a_value_beyond_float32_is_refused_and_changes_nothing(server):
    """1e300 passed the float64 check, became inf as float32, and was applied although the
    upload was answered 400: from then on /api/dataset answered 400 and the page could not
    load."""
    before = _dataset(server)
    status, _, body = request(server, "POST", "/api/upload",
                              "x1,x2,label\n1e300,0,0\n1,1,0\n2,2,1\n3,3,1\n",
                              {"Content-Type": "text/csv"})
    assert status == 400
    assert json.loads(body)["error"] == (
        "row 2, column x1: 1e+300 is too large for float32 (at most 3.403e+38 in magnitude)")
    assert _dataset(server) == before
    status, answer = post_json(server, "/api/step", {"steps": 1})
    assert status == 200 and answer["train_loss"] is not None


def test_an_upload_with_an_empty_training_split_is_refused_and_changes_nothing(server):
    """At train_ratio 0.1 a 4-row upload has no training point: it was answered 400 ("x is
    an empty batch") but applied, and every step then failed."""
    status, _ = post_json(server, "/api/config", {"settings": {"train_ratio": 0.1}})
    assert status == 200
    try:
        before = _dataset(server)
        status, _, body = request(server, "POST", "/api/upload", CSV_OK,
                                  {"Content-Type": "text/csv"})
        assert (status, json.loads(body)) == (400, {
            "error": "the training split is empty at train_ratio 0.1 with 4 points: raise "
                     "train_ratio or add points"})
        assert _dataset(server) == before
        status, answer = post_json(server, "/api/step", {"steps": 1})
        assert status == 200 and answer["train_loss"] is not None
    finally:
        post_json(server, "/api/config", {"settings": {"train_ratio": 0.5}})


def test_a_refused_setting_changes_nothing(session):
    """The same for a setting: the uploaded set at train_ratio 0.1 is refused as a whole."""
    session.set_upload(CSV_OK)
    try:
        before = dict(vars(session))
        with pytest.raises(ValueError, match=r"the training split is empty at train_ratio 0\.1"):
            session.configure({"train_ratio": 0.1})
        assert vars(session) == before
    finally:
        session.configure({"dataset": "circle"})


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_python_m_fnn_playground_stops_on_the_first_signal(sig):
    """``fnn playground`` / ``python -m fnn playground`` (the console script is the same
    function): fnn/__main__.py's Ctrl-C handler turned the first Ctrl-C into a flag the server
    never read, and SIGTERM too. Now either stops it at once: "fnn playground: stopped", 0."""
    root = Path(fnn.__file__).resolve().parent.parent
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    with subprocess.Popen([sys.executable, "-m", "fnn", "playground", "--port", "0",
                           "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, "PYTHONPATH": path,
                                          "JAX_PLATFORMS": "cpu"}) as proc:
        try:
            line = proc.stdout.readline()
            assert line.startswith("fnn playground: serving on http://127.0.0.1:"), line
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()  # the pipes are closed and the process reaped as the block ends
    assert proc.returncode == 0, err
    assert out == "fnn playground: stopped\n" and "Traceback" not in err, (out, err)


def test_values_at_float32s_limit_are_served(session):
    """Points near float32's largest value are accepted: the plot's domain is computed in
    float64 (``hi - lo`` overflowed float32 to inf, and the data set could not be served)."""
    session.set_upload("-3.4e38,-3.4e38,0\n3.4e38,3.4e38,1\n1,1,0\n2,2,1\n5,5,0\n6,6,1\n")
    try:
        assert np.isfinite(session.domain).all()
        served = json.loads(json.dumps(session.dataset(), allow_nan=False))  # strict JSON
        assert served["domain"][0][1] == pytest.approx(1.2 * 3.4e38)
        json.dumps(session.frame(0), allow_nan=False)
    finally:
        session.configure({"dataset": "circle"})
