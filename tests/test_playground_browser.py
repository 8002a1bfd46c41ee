"""The Playground in a real browser (Debian's headless Chromium driven by Selenium).

The server runs in this process (port 0); the page is loaded, played, clicked and read back
the way a learner uses it. Every number checked is one the page drew or holds.
"""

import json
import urllib.request

import jax
import numpy as np
import pytest
from _browser import background, chromium, external_requests, failed_requests, wait_for

import fnn
from fnn.playground import PlaygroundServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

backprop = jax.jit(fnn.backprop)
READY = "return document.body.dataset.ready === '1' && window.playground.frame"
STEP = "return window.playground.frame && window.playground.frame.step"
DELTAS = """return [...document.querySelectorAll('.node')]
  .filter((n) => Number(n.dataset.layer) > 0)
  .map((n) => [Number(n.dataset.layer), Number(n.dataset.unit), n.dataset.delta,
               n.querySelector('.delta-text').textContent])"""


@pytest.fixture(scope="module")
def server():
    with background(PlaygroundServer("127.0.0.1", 0)) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


@pytest.fixture
def page(server, browser):
    browser.get(server.url)
    wait_for(browser, READY)
    return browser


def by_id(driver, name):
    return driver.find_element("id", name)


def choose(driver, select_id, value):
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, select_id)).select_by_value(value)


def play_until(driver, steps):
    """Press play, wait until the page shows ``steps`` updates, press pause, wait for quiet."""
    start = driver.execute_script(STEP)
    by_id(driver, "play").click()
    wait_for(driver, f"return window.playground.frame.step >= {start + steps}", 180)
    by_id(driver, "play").click()
    # the frame in flight when pause was pressed lands; then nothing changes
    wait_for(driver, "return !window.playground.playing")
    for _ in range(100):
        before = driver.execute_script(STEP)
        driver.execute_script("return new Promise((r) => setTimeout(r, 300))")
        if driver.execute_script(STEP) == before:
            return before
    raise AssertionError("the page kept updating after pause")


def shown_loss(driver):
    return float(by_id(driver, "train-loss").text)


def region_image(driver):
    return driver.execute_script("return document.getElementById('region').toDataURL()")


def export(server):
    """The export, fetched as the page's download link fetches it."""
    with urllib.request.urlopen(server.url + "api/export.npz", timeout=60) as response:
        data = response.read()
    import io

    f = np.load(io.BytesIO(data))
    config = json.loads(str(f["config"]))
    net = fnn.MLP(tuple(int(n) for n in f["layer_sizes"]), activation=config["activation"],
                  output="softmax", loss=config["loss"], feedback=config["feedback"])
    depth = len(f["layer_sizes"]) - 1
    params = tuple({"W": f[f"W{l}"], "b": f[f"b{l}"]} for l in range(1, depth + 1))
    return net, params, f["x"], f["y"]


def test_the_page_loads_nothing_from_elsewhere_and_learns(server, page):
    assert external_requests(page, server.url.rstrip("/")) == []
    assert failed_requests(page) == []
    choose(page, "steps_per_frame", "10")
    wait_for(page, "return window.playground.data.config.steps_per_frame === 10")
    loss, image = shown_loss(page), region_image(page)
    assert 0.3 < loss < 2.0
    play_until(page, 400)
    assert shown_loss(page) < 0.7 * loss
    assert region_image(page) != image
    assert float(by_id(page, "fps").text) > 0
    history = page.execute_script("return window.playground.history")
    assert len(history) >= 10  # the loss curve has points to draw


def _select_point(page):
    """Click a training point that lies alone on the canvas; return its index."""
    data = page.execute_script("return window.playground.data")
    canvas = by_id(page, "region")
    w, h = canvas.size["width"], canvas.size["height"]
    (x0, x1), (y0, y1) = data["domain"]
    pts = np.asarray(data["points"])
    px = np.stack([(pts[:, 0] - x0) / (x1 - x0) * w, (y1 - pts[:, 1]) / (y1 - y0) * h], 1)
    for i in data["train"]:
        gaps = np.hypot(*(px - px[i]).T)
        gaps[i] = np.inf
        if gaps.min() > 6 and 20 < px[i, 0] < w - 20 and 20 < px[i, 1] < h - 20:
            break
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(page).move_to_element_with_offset(
        canvas, round(px[i, 0] - w / 2), round(px[i, 1] - h / 2)).click().perform()
    wait_for(page, f"return window.playground.frame.example === {i}")
    return i


def _drawn_deltas(page, net):
    drawn = page.execute_script(DELTAS)
    assert len(drawn) == sum(net.layer_sizes[1:])
    deltas = [np.zeros(n, np.float32) for n in net.layer_sizes[1:]]
    for layer, unit, value, text in drawn:
        v = float(value)
        assert float(np.float32(v)) == v  # a float32, exactly as served
        assert text.startswith("δ ")
        deltas[layer - 1][unit] = v
    return deltas


@pytest.mark.parametrize("feedback", ["backprop", "random"])
def test_the_deltas_drawn_are_fnn_backprops_bit_for_bit(server, page, feedback):
    choose(page, "feedback", feedback)
    wait_for(page, f"return window.playground.data.config.feedback === '{feedback}'")
    play_until(page, 30)
    i = _select_point(page)
    net, params, x, y = export(server)
    assert net.feedback == feedback
    drawn = _drawn_deltas(page, net)
    expected = backprop(net, params, x[i:i + 1], y[i:i + 1]).delta[1:]
    for l, (d, e) in enumerate(zip(drawn, expected, strict=True), start=1):
        np.testing.assert_array_equal(d, np.asarray(e)[0], err_msg=f"layer {l}")
    if feedback != "backprop":  # a different B: the hidden deltas are not the gradient's
        true = backprop(fnn.MLP(net.layer_sizes, activation=net.activation, loss=net.loss),
                        params, x[i:i + 1], y[i:i + 1]).delta
        assert not np.allclose(drawn[0], np.asarray(true[1])[0])
        choose(page, "feedback", "backprop")
        wait_for(page, "return window.playground.data.config.feedback === 'backprop'")


def test_the_mean_deltas_are_over_the_last_minibatch(server, page):
    choose(page, "delta-mode", "mean")
    wait_for(page, "return window.playground.frame.example === null")
    net, params, _, _ = export(server)
    drawn = _drawn_deltas(page, net)
    session = server.session
    idx = session.last_batch
    expected = backprop(net, params, session.x_all[idx], session.y[idx]).delta[1:]
    for d, e in zip(drawn, expected, strict=True):
        np.testing.assert_allclose(d, np.asarray(e).mean(0), rtol=1e-6, atol=1e-9)
    choose(page, "delta-mode", "example")


def test_the_network_controls_change_the_network(page):
    sizes = "return window.playground.data.layer_sizes.join('-')"
    nodes = "return document.querySelectorAll('.node').length"
    start = page.execute_script(sizes)
    assert start == "2-4-2-2"
    features = page.find_elements("css selector", ".node.feature")
    assert [f.get_attribute("title").split(":")[0] for f in features] == [
        "x1", "x2", "x1^2", "x2^2", "x1*x2", "sin(x1)", "sin(x2)"]
    features[2].click()  # add x1^2
    wait_for(page, sizes + " === '3-4-2-2'")
    by_id(page, "add-layer").click()
    wait_for(page, sizes + " === '3-4-2-2-2'")
    page.find_element("css selector", ".layer-control button").click()  # + on hidden layer 1
    wait_for(page, sizes + " === '3-5-2-2-2'")
    assert page.execute_script(nodes) == 7 + 5 + 2 + 2 + 2
    assert page.execute_script("return document.querySelectorAll('#edges line').length") == (
        3 * 5 + 5 * 2 + 2 * 2 + 2 * 2)
    # back as it was, through the same controls
    page.find_elements("css selector", ".layer-control button")[1].click()
    wait_for(page, sizes + " === '3-4-2-2-2'")
    by_id(page, "remove-layer").click()
    wait_for(page, sizes + " === '3-4-2-2'")
    page.find_elements("css selector", ".node.feature")[2].click()
    wait_for(page, sizes + " === '2-4-2-2'")


def test_a_diverged_run_is_said_not_drawn_as_numbers(page):
    choose(page, "learning_rate", "10")
    choose(page, "l2", "10")
    wait_for(page, "return window.playground.data.config.l2 === 10")
    by_id(page, "play").click()
    message = wait_for(page, "return document.getElementById('message').textContent", 120)
    assert "training diverged" in message
    assert not page.execute_script("return window.playground.playing")
    assert by_id(page, "train-loss").text == "–"
    choose(page, "learning_rate", "0.03")
    choose(page, "l2", "0")
    wait_for(page, "return window.playground.data.config.l2 === 0")
    by_id(page, "reset").click()
    wait_for(page, "return window.playground.frame.step === 0"
                   " && window.playground.frame.train_loss !== null")


def _csv(path, rows):
    path.write_text("x1,x2,label\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return str(path)


def test_an_uploaded_csv_is_validated_and_trains(server, page, tmp_path):
    by_id(page, "csv-file").send_keys(_csv(tmp_path / "bad.csv", [(0, 0, 0), (1, "nan", 1),
                                                                  (2, 2, 0), (3, 3, 1)]))
    message = wait_for(page, "return document.getElementById('message').textContent")
    assert "row 3: values must be finite" in message  # row 1 is the header
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 2
    points = rng.normal(size=(200, 2)) * 0.8 + np.where(labels[:, None] == 1, 1.2, -1.2)
    rows = [(f"{a:.4f}", f"{b:.4f}", int(c)) for (a, b), c in zip(points, labels, strict=True)]
    by_id(page, "csv-file").send_keys(_csv(tmp_path / "blobs.csv", rows))
    wait_for(page, "return window.playground.data.config.dataset === 'upload'"
                   " && window.playground.data.points.length === 200")
    assert page.execute_script("return document.getElementById('message').textContent") == ""
    served = np.asarray(page.execute_script("return window.playground.data.points"))
    np.testing.assert_allclose(served, points, atol=1e-4)
    loss = shown_loss(page)
    play_until(page, 200)
    assert shown_loss(page) < 0.5 * loss


def test_the_export_loads_back_with_fnn_and_predicts_the_same(server, page):
    play_until(page, 20)
    served = np.asarray(page.execute_script("return window.playground.frame.points_p1"))
    href = by_id(page, "export").get_attribute("href")
    assert href == server.url + "api/export.npz"
    net, params, x, _ = export(server)
    p1 = np.asarray(fnn.forward(net, params, x))[:, 1]
    np.testing.assert_allclose(p1, served, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(p1 > 0.5, served > 0.5)
    snippet = by_id(page, "snippet").text
    assert "np.load(" in snippet and "fnn.train_step(" in snippet


def test_the_speed_and_screenshot_script_runs(tmp_path, monkeypatch):
    """experiments/playground_page.py --smoke: its frame rate, JSON and screenshots."""
    from _experiments import run_experiment

    written = run_experiment("playground_page", tmp_path, monkeypatch)
    assert written["figures"] == ["page.png", "feedback.png"]
    assert written["median_frames_per_second"] > 0
    assert written["settings"]["hidden"] == [8, 8] and written["settings"]["points"] == 500
