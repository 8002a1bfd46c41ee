"""The Playground in a real browser: how many updates per second the page draws, and screenshots.

    python experiments/playground_page.py [--out DIR] [--smoke]

Serves ``fnn.playground`` on 127.0.0.1 (in this process), opens it in Debian's headless
Chromium (``apt-get install chromium chromium-driver``; nothing is downloaded) and presses
play on the issue's configuration: a 2-8-8-2 tanh network on the circle set of 500 points
(half for training), minibatches of 10, 5 training steps per frame. After a warm-up (the first
frames compile), it counts the frames the page draws (each one a request to the server, 5
``fnn.train_step`` calls, ``fnn.backprop`` for the deltas, ``fnn.per_example_grad_norms`` for
the histogram, and the page redrawing everything) over ``--windows`` windows of ``--seconds``
seconds, and reports the median.

Writes ``playground_page.json`` (frames per second of each window, training steps per
second) and two screenshots: ``page.png`` (that run, trained) and ``feedback.png`` (xor with
feedback alignment, ``B`` a fixed random matrix). ``--smoke``: one 1-second window.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence

from _chromium import chromium, wait_for
from _common import Experiment

from fnn.playground import PlaygroundServer

SPEED_SETTINGS = {"dataset": "circle", "points": 500, "train_ratio": 0.5, "features": ["x1", "x2"],
                  "hidden": [8, 8], "activation": "tanh", "batch_size": 10,
                  "steps_per_frame": 5, "optimizer": "sgd", "learning_rate": 0.03}
FEEDBACK_SETTINGS = {"dataset": "xor", "hidden": [8, 8], "feedback": "random",
                     "features": ["x1", "x2"], "learning_rate": 0.03, "steps_per_frame": 10}
FRAMES = "return [window.playground.stats.frames, window.playground.frame.step]"


def configure(driver, settings: dict) -> None:
    """Apply settings as the page's controls do (its ``configure``), and wait for the answer."""
    driver.execute_script("return configure(arguments[0]).then(() => true)", settings)


def play_for(driver, seconds: float) -> None:
    driver.find_element("id", "play").click()
    time.sleep(seconds)
    driver.find_element("id", "play").click()
    time.sleep(0.5)


def measure(driver, windows: int, seconds: float, warmup: float) -> list[tuple[float, float]]:
    """(frames per second, training steps per second) of each window while playing."""
    driver.find_element("id", "play").click()
    time.sleep(warmup)
    rates = []
    for _ in range(windows):
        (f0, s0), t0 = driver.execute_script(FRAMES), time.perf_counter()
        time.sleep(seconds)
        (f1, s1), t1 = driver.execute_script(FRAMES), time.perf_counter()
        rates.append(((f1 - f0) / (t1 - t0), (s1 - s0) / (t1 - t0)))
    driver.find_element("id", "play").click()
    time.sleep(0.5)
    return rates


def main(argv: Sequence[str] | None = None) -> dict:
    exp = Experiment("playground_page", __doc__.splitlines()[0], argv)
    windows, seconds, warmup = (1, 1.0, 2.0) if exp.smoke else (5, 10.0, 5.0)
    server = PlaygroundServer("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with chromium(1120, 1000) as driver:
            driver.get(server.url)
            wait_for(driver, "return document.body.dataset.ready === '1'", 120)
            configure(driver, SPEED_SETTINGS)
            wait_for(driver, "return window.playground.data.layer_sizes.join('-') === '2-8-8-2'")
            rates = measure(driver, windows, seconds, warmup)
            driver.set_window_size(1120, 1180)
            driver.save_screenshot(str(exp.out / "page.png"))
            exp.files.append(str(exp.out / "page.png"))
            configure(driver, FEEDBACK_SETTINGS)
            wait_for(driver, "return window.playground.data.config.feedback === 'random'")
            play_for(driver, 2.0 if exp.smoke else 15.0)
            driver.save_screenshot(str(exp.out / "feedback.png"))
            exp.files.append(str(exp.out / "feedback.png"))
    finally:
        server.shutdown()
        server.server_close()
    fps = [r[0] for r in rates]
    steps = [r[1] for r in rates]
    results = {"settings": SPEED_SETTINGS, "window_seconds": seconds, "warmup_seconds": warmup,
               "frames_per_second": fps, "steps_per_second": steps,
               "median_frames_per_second": statistics.median(fps),
               "median_steps_per_second": statistics.median(steps)}
    exp.save_json(results)
    exp.report([f"2-8-8-2 tanh on 500 points, {SPEED_SETTINGS['steps_per_frame']} steps a "
                f"frame: {results['median_frames_per_second']:.1f} frames drawn per second "
                f"(median of {windows} x {seconds:g} s; each window: "
                f"{', '.join(f'{f:.1f}' for f in fps)}), "
                f"{results['median_steps_per_second']:.0f} training steps per second"])
    return results


if __name__ == "__main__":
    main()
