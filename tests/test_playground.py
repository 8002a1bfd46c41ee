"""The Playground's server side: settings, CSV upload, deltas, export, HTTP safety, Ctrl-C.

The page itself is tested in a real browser in test_playground_browser.py. Everything here
shares one Session of the default 2-4-2 tanh net, so each function compiles once.
"""

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import time

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
