"""CPU inference speed-up: Linear weights reordered once for oneDNN (the layout torch.compile's
CPU path also uses), with the feed-forward activation fused into the first Linear. Same math as
`F.linear`; results differ only in rounding (~1e-6)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from model.transformer import FeedForward, Transformer

# oneDNN lays a packed weight out for the number of input rows given here. Laid out for 1 row,
# 4-64 rows ran 1.3-2.6x slower than laid out for 64, and 1 row no faster. Laid out for 64, every
# Linear of both benchmark models is as fast packed as plain at 1 row and faster at 4 or more.
PACKED_FOR_ROWS = 64

# Our activation names -> oneDNN's post-op (attr, algorithm) for `_linear_pointwise`.
FUSED_ACTIVATIONS = {
    "relu": ("relu", ""),
    "gelu": ("gelu", "none"),
    "gelu_tanh": ("gelu", "tanh"),
    "swish": ("swish", ""),
}


def can_prepack(model: Transformer) -> bool:
    weight = model.embed.tokens.weight
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
    )


@torch.library.custom_op("attnserve::packed_linear", mutates_args=())
def packed_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, attr: str, algorithm: str
) -> Tensor:
    """`_linear_pointwise` as an opaque op for torch.compile, which cannot lower it itself."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)


@packed_linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, attr: str, algorithm: str) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class PackedLinear(nn.Module):
    """An inference-only `nn.Linear` whose weight is kept in oneDNN's blocked layout, optionally
    followed by a fused activation (`activation`, a key of FUSED_ACTIVATIONS)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, activation: str | None = None):
        super().__init__()
        self.out_features = weight.shape[0]
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_FOR_ROWS)
        self.bias = None if bias is None else bias.detach()
        self.attr, self.algorithm = FUSED_ACTIVATIONS[activation] if activation else ("none", "")

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return packed_linear(x, self.weight, self.bias, self.attr, self.algorithm)
        return torch.ops.mkldnn._linear_pointwise(
            x, self.weight, self.bias, self.attr, [], self.algorithm
        )


def _identity(x: Tensor) -> Tensor:
    return x


@torch.inference_mode()
def prepacked(model: Transformer) -> Transformer:
    """A copy of `model` for CPU inference: every Linear and the output projection packed, the
    feed-forward activation fused into fc1."""
    packed = copy.deepcopy(model).eval()
    head = packed.embed.tokens.weight if packed.lm_head is None else packed.lm_head.weight
    packed.packed_head = PackedLinear(head, None)
    activation = model.config.activation
    for module in list(packed.modules()):
        if isinstance(module, FeedForward) and activation in FUSED_ACTIVATIONS:
            module.fc1 = PackedLinear(module.fc1.weight, module.fc1.bias, activation)  # type: ignore[assignment]
            module.activation = _identity
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, PackedLinear(child.weight, child.bias))
    return packed
