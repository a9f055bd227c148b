"""CPU inference speed-up: Linear weights reordered once for oneDNN (the layout torch.compile's
CPU path also uses). Same math as `F.linear`; results differ only in rounding (~1e-6)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from model.transformer import Transformer


def can_prepack(model: Transformer) -> bool:
    weight = model.embed.tokens.weight
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
    )


@torch.library.custom_op("attnserve::packed_linear", mutates_args=())
def packed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`_linear_pointwise` as an opaque op for torch.compile, which cannot lower it itself."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@packed_linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class PackedLinear(nn.Module):
    """An inference-only `nn.Linear` whose weight is kept in oneDNN's blocked layout."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.out_features = weight.shape[0]
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return packed_linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


@torch.inference_mode()
def prepacked(model: Transformer) -> Transformer:
    """A copy of `model` for CPU inference with every Linear (and the output projection) packed."""
    packed = copy.deepcopy(model).eval()
    head = packed.embed.tokens.weight if packed.lm_head is None else packed.lm_head.weight
    packed.packed_head = PackedLinear(head, None)
    for module in list(packed.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, PackedLinear(child.weight, child.bias))
    return packed
