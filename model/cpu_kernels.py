"""CPU inference speed-ups, each a copy of the model with its Linear layers replaced:

- `prepacked`: weights reordered once for oneDNN (the layout torch.compile's CPU path also uses),
  with the feed-forward activation fused into the first Linear. Same math as `F.linear`; results
  differ only in rounding (~1e-6). The server's default.
- `quantized`: int8 weights and int8 inputs multiplied in exact integer arithmetic (`--quantize
  int8`, as CTranslate2's int8 compute type). A quarter of the Linear layers' bytes (embeddings
  stay float32) and a faster matmul; ~1% error per layer, so the tokens may differ from
  float32's.
"""

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


def int8_matmul(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None) -> Tensor:
    """x (rows, in) float32 times an int8 weight (in, out): each row quantized with a scale of its
    own, int32 sums (exact), scaled back by the row's and the output feature's scales."""
    scale = x.abs().amax(1, keepdim=True).clamp_min_(1e-12) / 127  # (rows, 1)
    q = (x / scale).round_().to(torch.int8)  # every |q| <= 127
    out = (torch._int_mm(q, weight) * scale).mul_(weight_scale)
    return out if bias is None else out.add_(bias)


class Int8Linear(nn.Module):
    """An inference-only `nn.Linear` in int8: the weight quantized once with one scale per output
    feature, each input row quantized at every call with a scale of its own, and the two
    multiplied by `torch._int_mm` with int32 sums, which are exact. A row's output depends on that
    row alone, so a request's tokens do not depend on what else is in the batch."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.out_features = weight.shape[0]
        weight = weight.detach().float()
        scale = weight.abs().amax(1).clamp_min(1e-12) / 127  # (out,)
        weight = (weight / scale[:, None]).round_().to(torch.int8)
        self.weight = weight.t().contiguous()  # (in, out), as torch._int_mm takes it
        self.weight_scale = scale
        self.bias = None if bias is None else bias.detach().float()

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = int8_matmul(rows, self.weight, self.weight_scale, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)


@torch.inference_mode()
def quantized(model: Transformer) -> Transformer:
    """A float32 copy of `model` whose Linear layers and output projection are Int8Linear.
    Embeddings, layer norms and attention stay float32."""
    q = copy.deepcopy(model).float().eval()
    head = q.embed.tokens.weight if q.lm_head is None else q.lm_head.weight
    q.packed_head = Int8Linear(head, None)
    for module in list(q.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child.weight, child.bias))
    return q
