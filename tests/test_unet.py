"""The UNet's attention: 4-D scaled_dot_product_attention computes softmax(q k^T / sqrt(d)) v per head."""
import math

import pytest
import torch as th

from guided_diffusion.unet import qkv_attention


def attention_by_hand(qkv: th.Tensor, heads: int, legacy: bool) -> th.Tensor:
    """softmax(q k^T / sqrt(C)) v for each head, with the packing of guided diffusion's two classes:
    QKVAttentionLegacy holds [q; k; v] per head, QKVAttention holds q of all heads, then k, then v."""
    batch, width, length = qkv.shape
    ch = width // (3 * heads)
    outputs = []
    for h in range(heads):
        if legacy:
            first = 3 * ch * h
            q, k, v = (qkv[:, first + i * ch:first + (i + 1) * ch] for i in range(3))
        else:
            q, k, v = (qkv[:, i * heads * ch + h * ch:i * heads * ch + (h + 1) * ch] for i in range(3))
        logits = th.einsum("bct,bcs->bts", q, k) / math.sqrt(ch)  # (B, T queries, T keys)
        weights = th.softmax(logits, dim=-1)
        outputs.append(th.einsum("bts,bcs->bct", weights, v))  # (B, C, T)
    return th.cat(outputs, dim=1)  # (B, H*C, T), heads in order


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_equals_the_formula(legacy, heads):
    # float32 on both sides; measured max |diff| / max |value| 2.9e-7 to 4.4e-7 over the six cases
    g = th.Generator().manual_seed(heads)
    ch, length = 8, 20  # C != T, so a transposed operand changes the result
    qkv = th.randn(3, 3 * heads * ch, length, generator=g) * 2
    out = qkv_attention(qkv, heads, legacy)
    expected = attention_by_hand(qkv, heads, legacy)
    assert out.shape == expected.shape == (3, heads * ch, length)
    assert (out - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_attention_hands_the_kernel_4d_tensors(monkeypatch):
    # 3-D inputs always take PyTorch's math path; (B, H, T, C) lets a GPU pick a fused kernel
    seen = []
    kernel = th.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return kernel(q, k, v, *args, **kwargs)

    monkeypatch.setattr(th.nn.functional, "scaled_dot_product_attention", spy)
    for legacy in (True, False):
        qkv_attention(th.randn(2, 3 * 4 * 8, 20), 4, legacy)
    assert seen == [((2, 4, 20, 8),) * 3] * 2
