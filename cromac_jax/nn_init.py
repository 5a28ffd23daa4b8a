"""Initialisers matching PyTorch's defaults, which the official PyMARL code trains with.

PyTorch draws Linear and GRU weights from U(-1/sqrt(fan_in), 1/sqrt(fan_in)); flax's GRUCell
defaults to an orthogonal recurrent kernel instead. Besides matching the reference, avoiding the
orthogonal initialiser avoids batched QR decompositions under ``vmap`` over seeds, which were
seen to hang jax 0.10.x's CPU backend.
"""

from __future__ import annotations

import flax.linen as nn

#: U(-1/sqrt(fan_in), 1/sqrt(fan_in)): variance_scaling with scale 1/3 in uniform mode.
torch_uniform = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_dense(features: int, name: str | None = None) -> nn.Dense:
    """A Dense layer with PyTorch's default weight init (biases start at zero)."""
    return nn.Dense(features, kernel_init=torch_uniform, name=name)


def torch_gru(features: int, name: str | None = None) -> nn.GRUCell:
    """A GRU cell with PyTorch-style uniform init for both kernels (no QR)."""
    return nn.GRUCell(
        features=features,
        kernel_init=torch_uniform,
        recurrent_kernel_init=torch_uniform,
        name=name,
    )
