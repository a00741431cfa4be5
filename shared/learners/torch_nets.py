"""The networks behind the torch learners: an encoder per kind and a head per task.

Encoders take ``(batch, width)`` (linear, mlp) or ``(batch, seq_len, width + 1)`` (gru, cnn; the last channel
is 1 for a real event and 0 for left padding) and return ``(batch, encoder.out_features)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torch.nn import functional


class LinearEncoder(nn.Module):
    """The identity: the head sees the vector itself (logistic, softmax or linear regression)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class MLPEncoder(nn.Module):
    """Fully connected layers with ReLU."""

    def __init__(self, width: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = width
        for hidden in hidden_sizes:
            layers += [nn.Linear(size, hidden), nn.ReLU()]
            size = hidden
        self.layers = nn.Sequential(*layers)
        self.out_features = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GRUEncoder(nn.Module):
    """A GRU over the entity's recent events; the last hidden state summarizes the sequence."""

    def __init__(self, width: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(width + 1, hidden_size, num_layers=num_layers, batch_first=True)
        self.out_features = hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.gru(x)
        return hidden[-1]


class CNNEncoder(nn.Module):
    """Causal 1D convolutions over the entity's recent events; the last step and a max over time, joined."""

    def __init__(self, width: int, channels: int, kernel_size: int, num_layers: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        sizes = [width + 1] + [channels] * num_layers
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel_size) for a, b in itertools.pairwise(sizes))
        self.out_features = 2 * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        for conv in self.convs:
            h = functional.relu(conv(functional.pad(h, (self.kernel_size - 1, 0))))
        return torch.cat([h[:, :, -1], h.amax(dim=2)], dim=1)


class Network(nn.Module):
    """An encoder and a head: ``outputs`` logits/values, or for anomaly detection a reconstruction of the
    current event through a ``bottleneck``."""

    def __init__(self, encoder: nn.Module, outputs: int, *, reconstruct: int = 0, bottleneck: int = 0,
                 nonlinear: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        in_features = int(cast(int, encoder.out_features))
        if reconstruct:
            layers: list[nn.Module] = [nn.Linear(in_features, bottleneck)]
            if nonlinear:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(bottleneck, reconstruct))
            self.head = nn.Sequential(*layers)
        else:
            self.head = nn.Sequential(nn.Linear(in_features, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def initialize(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialization, drawn from ``generator`` instead of the global RNG."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear | nn.Conv1d):
                fan_in = layer.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
                if layer.bias is not None:
                    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
            elif isinstance(layer, nn.GRU):
                bound = 1.0 / math.sqrt(layer.hidden_size)
                for parameter in layer.parameters():
                    nn.init.uniform_(parameter, -bound, bound, generator=generator)
