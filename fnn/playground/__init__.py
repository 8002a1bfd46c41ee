"""The Playground: the lecture's TensorFlow Playground, trained by fnn's own backprop.

``fnn playground`` (or ``main`` from Python) serves a page on 127.0.0.1 where a small
network learns a 2-D data set while you watch its decision regions, every neuron's output and
every neuron's delta. Training runs in this process, in ``fnn.train_step`` (the hand-written
delta recursion); the deltas drawn are ``fnn.backprop``'s; the histogram is
``fnn.per_example_grad_norms``. The page's JavaScript and CSS ship in this package
(``fnn/playground/static``) and load nothing from the network.
"""

from fnn.playground._server import PlaygroundServer, main
from fnn.playground._session import Config, Session, input_features, parse_csv

__all__ = ["Config", "PlaygroundServer", "Session", "input_features", "main", "parse_csv"]
