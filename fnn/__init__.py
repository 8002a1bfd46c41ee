"""fnn: feedforward networks and backpropagation as the lecture teaches them, in JAX.

The network is a pure function of a parameter pytree; its backward pass is the lecture's
delta recursion, written by hand for one sample, ``jax.vmap``-ed over the batch and attached
to the loss with ``jax.custom_vjp``.
"""

from fnn import parallel, privacy
from fnn.activations import (
    leaky_relu,
    relu,
    sigmoid,
    tanh,
)
from fnn.backpropagation import (
    Backprop,
    backprop,
    batch_gradients,
    delta_recursion,
    feedback_matrix,
    loss,
    trace_and_deltas,
)
from fnn.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from fnn.data import (
    DATASETS,
    fit_standardize,
    load_dataset,
    load_mnist_idx,
    read_idx,
    standardize,
    stratified_split,
    write_idx,
)
from fnn.diagnostics import (
    Check,
    GradientCheck,
    GradientCheckError,
    check_gradients,
    layer_diagnostics,
)
from fnn.losses import (
    binary_cross_entropy,
    cross_entropy,
    output_delta,
    softmax,
    softmax_jacobian,
    squared_error,
)
from fnn.metrics import accuracy, confusion_matrix, predict
from fnn.network import (
    FEEDBACK_RULES,
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
from fnn.per_example import (
    Clipped,
    clipped_grad,
    clipped_grad_and_norms,
    dp_gradient,
    dp_noise,
    per_example_grad_norms,
)
from fnn.training import (
    DP,
    FitResult,
    TrainState,
    evaluate,
    fit,
    init_state,
    make_optimizer,
    train_epoch,
    train_step,
)

__version__ = "0.1.0"

__all__ = [
    "CHECKPOINT_NAME",
    "DATASETS",
    "DP",
    "FEEDBACK_RULES",
    "MLP",
    "Backprop",
    "Check",
    "CheckpointError",
    "Clipped",
    "FitResult",
    "GradientCheck",
    "GradientCheckError",
    "Params",
    "TrainState",
    "accuracy",
    "backprop",
    "batch_gradients",
    "binary_cross_entropy",
    "check_gradients",
    "clipped_grad",
    "clipped_grad_and_norms",
    "confusion_matrix",
    "cross_entropy",
    "delta_recursion",
    "dp_gradient",
    "dp_noise",
    "evaluate",
    "feedback_matrix",
    "fit",
    "fit_standardize",
    "forward",
    "forward_augmented",
    "forward_trace",
    "from_augmented",
    "init",
    "init_state",
    "layer_diagnostics",
    "leaky_relu",
    "load_checkpoint",
    "load_dataset",
    "load_mnist_idx",
    "loss",
    "loss_autodiff",
    "make_optimizer",
    "output_delta",
    "parallel",
    "per_example_grad_norms",
    "predict",
    "privacy",
    "read_idx",
    "read_meta",
    "relu",
    "save_checkpoint",
    "sigmoid",
    "softmax",
    "softmax_jacobian",
    "squared_error",
    "standardize",
    "stratified_split",
    "tanh",
    "to_augmented",
    "trace_and_deltas",
    "train_epoch",
    "train_step",
    "write_idx",
]
