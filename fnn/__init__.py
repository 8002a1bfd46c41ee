"""fnn: feedforward networks and backpropagation as the lecture teaches them, in JAX.

The network is a pure function of a parameter pytree; its backward pass is the lecture's
delta recursion, written by hand for one sample, ``jax.vmap``-ed over the batch and attached
to the loss with ``jax.custom_vjp``.

The names below are loaded on first use (PEP 562): ``import fnn`` itself imports no JAX, so
``fnn --help`` answers at once and the command line sets up its Ctrl-C handling before JAX
loads. ``fnn.MLP``, ``from fnn import loss`` and ``fnn.data`` work as with eager imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "backpack": "curvature",
    "batch_diag_ggn": "curvature",
    "batch_diag_hessian": "curvature",
    "batch_grad": "curvature",
    "batch_l2_grad": "curvature",
    "diag_ggn": "curvature",
    "diag_hessian": "curvature",
    "grad_variance": "curvature",
    "kfac": "curvature",
    "kflr": "curvature",
    "sum_grad_squared": "curvature",
    "Activation": "activations",
    "leaky_relu": "activations",
    "relu": "activations",
    "sigmoid": "activations",
    "tanh": "activations",
    "Backprop": "backpropagation",
    "backprop": "backpropagation",
    "batch_gradients": "backpropagation",
    "delta_recursion": "backpropagation",
    "feedback_matrix": "backpropagation",
    "loss": "backpropagation",
    "trace_and_deltas": "backpropagation",
    "CHECKPOINT_NAME": "checkpoint",
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_meta": "checkpoint",
    "save_checkpoint": "checkpoint",
    "DATASETS": "data",
    "fit_standardize": "data",
    "load_dataset": "data",
    "load_mnist_idx": "data",
    "read_idx": "data",
    "standardize": "data",
    "stratified_split": "data",
    "write_idx": "data",
    "Check": "diagnostics",
    "GradientCheck": "diagnostics",
    "GradientCheckError": "diagnostics",
    "check_gradients": "diagnostics",
    "layer_diagnostics": "diagnostics",
    "binary_cross_entropy": "losses",
    "cross_entropy": "losses",
    "output_delta": "losses",
    "softmax": "losses",
    "softmax_jacobian": "losses",
    "squared_error": "losses",
    "accuracy": "metrics",
    "confusion_matrix": "metrics",
    "predict": "metrics",
    "FEEDBACK_RULES": "network",
    "MLP": "network",
    "Params": "network",
    "forward": "network",
    "forward_augmented": "network",
    "forward_trace": "network",
    "from_augmented": "network",
    "init": "network",
    "loss_autodiff": "network",
    "to_augmented": "network",
    "Clipped": "per_example",
    "clipped_grad": "per_example",
    "clipped_grad_and_norms": "per_example",
    "dp_gradient": "per_example",
    "dp_noise": "per_example",
    "per_example_grad_norms": "per_example",
    "POLICIES": "precision",
    "Policy": "precision",
    "DP": "training",
    "FitResult": "training",
    "TrainState": "training",
    "evaluate": "training",
    "fit": "training",
    "init_state": "training",
    "make_optimizer": "training",
    "train_epoch": "training",
    "train_step": "training",
}
"""Public name -> the module of fnn that defines it."""

_MODULES = ("activations", "backpropagation", "checkpoint", "cli", "curvature", "data",
            "diagnostics", "losses", "metrics", "network", "parallel", "per_example", "precision",
            "privacy", "testing", "training")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"fnn.{_EXPORTS[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"fnn.{name}")
    else:
        raise AttributeError(f"module 'fnn' has no attribute {name!r}")
    globals()[name] = value  # the next lookup is an ordinary one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_MODULES})


if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports these names stand for
    from fnn import parallel
    from fnn.activations import (
        Activation,
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
    from fnn.precision import POLICIES, Policy
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


__all__ = [
    "CHECKPOINT_NAME",
    "DATASETS",
    "DP",
    "FEEDBACK_RULES",
    "MLP",
    "POLICIES",
    "Activation",
    "Backprop",
    "Check",
    "CheckpointError",
    "Clipped",
    "FitResult",
    "GradientCheck",
    "GradientCheckError",
    "Params",
    "Policy",
    "TrainState",
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
    "init_state",
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
    "sum_grad_squared",
    "tanh",
    "to_augmented",
    "trace_and_deltas",
    "train_epoch",
    "train_step",
    "write_idx",
]
