"""fnn: feedforward networks and backpropagation as the lecture teaches them, in JAX.

The network is a pure function of a parameter pytree; its backward pass is the lecture's
delta recursion, written by hand for one sample, ``jax.vmap``-ed over the batch and attached
to the loss with ``jax.custom_vjp``.
"""

from fnn.activations import (
    leaky_relu,
    relu,
    sigmoid,
    tanh,
)
from fnn.backprop import Backprop, backprop, batch_gradients, delta_recursion, loss
from fnn.losses import (
    binary_cross_entropy,
    cross_entropy,
    output_delta,
    softmax,
    softmax_jacobian,
    squared_error,
)
from fnn.network import (
    MLP,
    Params,
    forward,
    forward_augmented,
    forward_trace,
    from_augmented,
    init,
    loss_autodiff,
    to_augmented,
)

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "Backprop",
    "Params",
    "backprop",
    "batch_gradients",
    "binary_cross_entropy",
    "cross_entropy",
    "delta_recursion",
    "forward",
    "forward_augmented",
    "forward_trace",
    "from_augmented",
    "init",
    "leaky_relu",
    "loss",
    "loss_autodiff",
    "output_delta",
    "relu",
    "sigmoid",
    "softmax",
    "softmax_jacobian",
    "squared_error",
    "tanh",
    "to_augmented",
]
