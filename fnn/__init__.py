"""fnn: feedforward networks and backpropagation as the lecture teaches them, in JAX.

The network is a pure function of a parameter pytree; its backward pass is the lecture's
delta recursion, written by hand for one sample, ``jax.vmap``-ed over the batch and attached
to the loss with ``jax.custom_vjp``.
"""

from fnn import parallel
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
from fnn.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from fnn.curvature import (
    backpack,
    batch_diag_ggn,
    batch_diag_hessian,
    batch_grad,
    batch_l2_grad,
    diag_ggn,
    diag_hessian,
    grad_variance,
    kfac,
    kflr,
    sum_grad_squared,
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
from fnn.training import DP, FitResult, evaluate, fit, make_optimizer, train_epoch, train_step

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
    "accuracy",
    "backpack",
    "backprop",
    "batch_diag_ggn",
    "batch_diag_hessian",
    "batch_grad",
    "batch_gradients",
    "batch_l2_grad",
    "binary_cross_entropy",
    "check_gradients",
    "clipped_grad",
    "clipped_grad_and_norms",
    "confusion_matrix",
    "cross_entropy",
    "delta_recursion",
    "diag_ggn",
    "diag_hessian",
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
    "grad_variance",
    "init",
    "kfac",
    "kflr",
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
    "read_idx",
    "relu",
    "save_checkpoint",
    "sigmoid",
    "softmax",
    "softmax_jacobian",
    "squared_error",
    "standardize",
    "stratified_split",
    "sum_grad_squared",
    "tanh",
    "to_augmented",
    "trace_and_deltas",
    "train_epoch",
    "train_step",
    "write_idx",
]
