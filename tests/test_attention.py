"""Correctness of the attention mechanisms in nmt.models.attention.

Every mechanism is checked against a float64 implementation written here from its formula (not
from the module's code), using the module's own weights; MultiHeadAttention is also checked
against torch.nn.MultiheadAttention. Then: Bahdanau's chunked path against the unchunked one
(outputs and gradients), invariance to padded keys, causality. Decoding one position at a time
(nmt.models.incremental, which uses these modules' projections and scores) is checked against
the full forward pass in tests/test_model.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import nmt.models.attention as attention_module
from nmt.models.attention import (
    Attention,
    BahdanauAttention,
    LuongAttention,
    MultiHeadAttention,
)

MECHANISMS = ["multihead", "luong_dot", "luong_general", "bahdanau"]
D_MODEL, HEADS = 16, 4
ATOL, RTOL = 1e-5, 1e-5


def make_attention(
    kind: str, d_model: int = D_MODEL, heads: int = HEADS, cross: bool = False
) -> Attention:
    """A module of `kind` whose parameters are all perturbed away from their initial values, so
    that the (zero-initialised) biases and Luong's near-identity W_a are really exercised."""
    if kind == "multihead":
        attn = MultiHeadAttention(d_model, heads, 0.0, cross)
    elif kind == "luong_dot":
        attn = LuongAttention(d_model, heads, 0.0, cross, score="dot")
    elif kind == "luong_general":
        attn = LuongAttention(d_model, heads, 0.0, cross, score="general")
    elif kind == "luong_general_scaled":
        attn = LuongAttention(d_model, heads, 0.0, cross, score="general", scaled=True)
    elif kind == "bahdanau":
        attn = BahdanauAttention(d_model, heads, 0.0, cross)
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if kind == "bahdanau":
            attn.v.mul_(5.0)  # make the additive scores far from uniform
    return attn.eval()


def random_padding(batch: int, length: int) -> torch.Tensor:
    """A random key padding mask (True = padding) that never masks a whole row: position 0 is
    always a real key (it is the only key the first query sees under the causal mask)."""
    mask = torch.rand(batch, length) < 0.35
    mask[:, 0] = False
    return mask


# ----------------------------------------------------------------------------------------------
# The float64 reference, written from the formulas.


def qkv_weights(attn: Attention) -> tuple[torch.Tensor, torch.Tensor]:
    """The Q, K, V projections stacked (3·d × d) in float64, whichever modules hold them: one
    `in_proj` (self-attention) or `q_proj` and `kv_proj` (cross-attention)."""
    if attn.cross:
        w = torch.cat([attn.q_proj.weight, attn.kv_proj.weight])
        b = torch.cat([attn.q_proj.bias, attn.kv_proj.bias])
    else:
        w, b = attn.in_proj.weight, attn.in_proj.bias
    return w.detach().double(), b.detach().double()


def reference_attention(
    attn: Attention,
    kind: str,
    query: torch.Tensor,
    memory: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """out, weights (B, H, L, S) in float64, every head at once with einsum.

    multihead:      score = q·k / sqrt(d_k)
    luong dot:      score = q·k              (Luong et al. 2015, unscaled)
    luong general:  score = qᵀ W_a k         (one W_a per head, unscaled)
    luong general, scaled: score = qᵀ W_a k / sqrt(d_k)   (the `luong_scaled` option)
    bahdanau:       score = vᵀ tanh(W_q q + W_k k)   (per-head v, projections with biases)
    weights = softmax over the allowed keys; out = out_proj(concat_h(weights_h V_h)).
    """
    d, heads = attn.d_model, attn.heads
    dh = d // heads
    w_in, b_in = qkv_weights(attn)
    w_out = attn.out_proj.weight.detach().double()
    b_out = attn.out_proj.bias.detach().double()
    x_q, x_m = query.detach().double(), memory.detach().double()
    q_all = x_q @ w_in[:d].T + b_in[:d]  # (B, L, d)
    k_all = x_m @ w_in[d : 2 * d].T + b_in[d : 2 * d]  # (B, S, d)
    v_all = x_m @ w_in[2 * d :].T + b_in[2 * d :]
    B, L, S = query.shape[0], query.shape[1], memory.shape[1]

    allowed = torch.ones(B, L, S, dtype=torch.bool)
    if key_padding_mask is not None:
        allowed &= ~key_padding_mask[:, None, :]
    if causal:  # query i sees keys j <= i
        allowed &= torch.arange(S)[None, :] <= torch.arange(L)[:, None]

    # Heads: the d_model features split into `heads` consecutive groups of d_model / heads.
    q = q_all.view(B, L, heads, dh)
    k = k_all.view(B, S, heads, dh)
    v = v_all.view(B, S, heads, dh)
    if kind == "multihead":
        scores = torch.einsum("blhd,bshd->bhls", q, k) / math.sqrt(dh)
    elif kind == "luong_dot":
        scores = torch.einsum("blhd,bshd->bhls", q, k)
    elif kind in ("luong_general", "luong_general_scaled"):
        w_a = attn.w_a.detach().double()  # (H, dh, dh)
        scores = torch.einsum("blhd,hde,bshe->bhls", q, w_a, k)
        if kind == "luong_general_scaled":
            scores = scores / math.sqrt(dh)
    elif kind == "bahdanau":
        vec = attn.v.detach().double()  # (H, dh)
        hidden = torch.tanh(q[:, :, None] + k[:, None, :])  # (B, L, S, H, dh)
        scores = torch.einsum("blshd,hd->bhls", hidden, vec)
    else:
        raise ValueError(kind)
    scores = scores.masked_fill(~allowed[:, None], -math.inf)
    e = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    weights = e / e.sum(dim=-1, keepdim=True)  # (B, H, L, S)
    merged = torch.einsum("bhls,bshd->blhd", weights, v).reshape(B, L, d)  # heads concatenated
    return merged @ w_out.T + b_out, weights


# ----------------------------------------------------------------------------------------------
# 1. Each mechanism against the float64 reference.


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", MECHANISMS)
def test_self_attention_matches_float64_reference(kind, causal):
    """Self-attention (memory is query): the fast path (need_weights=False, fused kernels) and
    the explicit path (need_weights=True), with and without a random key padding mask."""
    torch.manual_seed(10)
    attn = make_attention(kind)
    x = torch.randn(3, 7, D_MODEL)
    for mask in (None, random_padding(3, 7)):
        ref_out, ref_w = reference_attention(attn, kind, x, x, mask, causal)
        out, weights = attn(x, x, key_padding_mask=mask, causal=causal)
        assert weights is None
        assert out.dtype == torch.float32 and out.shape == (3, 7, D_MODEL)
        torch.testing.assert_close(out.double(), ref_out, atol=ATOL, rtol=RTOL)
        out, weights = attn(x, x, key_padding_mask=mask, causal=causal, need_weights=True)
        assert weights.shape == (3, HEADS, 7, 7)
        torch.testing.assert_close(out.double(), ref_out, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(weights.double(), ref_w, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kind", MECHANISMS)
def test_cross_attention_matches_float64_reference(kind):
    """Query and memory are different tensors of different lengths (the encoder-decoder case)."""
    torch.manual_seed(11)
    attn = make_attention(kind, cross=True)
    query, memory = torch.randn(4, 5, D_MODEL), torch.randn(4, 9, D_MODEL)
    for mask in (None, random_padding(4, 9)):
        ref_out, ref_w = reference_attention(attn, kind, query, memory, mask, False)
        out, _ = attn(query, memory, key_padding_mask=mask)
        torch.testing.assert_close(out.double(), ref_out, atol=ATOL, rtol=RTOL)
        out, weights = attn(query, memory, key_padding_mask=mask, need_weights=True)
        torch.testing.assert_close(out.double(), ref_out, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(weights.double(), ref_w, atol=ATOL, rtol=RTOL)
        # Padded keys get exactly zero weight; every row sums to one.
        if mask is not None:
            assert torch.all(weights[mask[:, None, None, :].expand_as(weights)] == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(4, HEADS, 5))


@pytest.mark.parametrize("kind", MECHANISMS)
def test_causal_self_attention_with_separate_memory_tensor_matches_reference(kind):
    """The unfused projection path (memory is not the query object) with the causal mask."""
    torch.manual_seed(12)
    attn = make_attention(kind)
    x = torch.randn(2, 6, D_MODEL)
    kpm = random_padding(2, 6)
    out, _ = attn(x, x.clone(), key_padding_mask=kpm, causal=True)
    ref_out, _ = reference_attention(attn, kind, x, x, kpm, True)
    torch.testing.assert_close(out.double(), ref_out, atol=ATOL, rtol=RTOL)


def test_luong_scores_are_unscaled_like_the_paper():
    """Luong's scores are q·k and qᵀW_a k with no 1/sqrt(d_k) factor (the paper's formula)."""
    torch.manual_seed(13)
    for score in ("dot", "general"):
        attn = LuongAttention(D_MODEL, HEADS, score=score)
        q, k = (
            torch.randn(2, HEADS, 3, D_MODEL // HEADS),
            torch.randn(2, HEADS, 4, D_MODEL // HEADS),
        )
        w = attn.w_a if score == "general" else torch.eye(D_MODEL // HEADS)
        expected = torch.einsum("bhld,hde,bhse->bhls", q, w.expand(HEADS, -1, -1), k)
        torch.testing.assert_close(attn.scores(q, k), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_scaled_luong_matches_float64_reference(causal):
    """The `luong_scaled` option: qᵀW_a k / sqrt(d_k), outputs and returned weights."""
    torch.manual_seed(14)
    attn = make_attention("luong_general_scaled")
    x = torch.randn(3, 7, D_MODEL)
    kpm = random_padding(3, 7)
    for need_weights in (False, True):
        out, weights = attn(x, x, key_padding_mask=kpm, causal=causal, need_weights=need_weights)
        ref_out, ref_weights = reference_attention(attn, "luong_general_scaled", x, x, kpm, causal)
        torch.testing.assert_close(out.double(), ref_out, atol=ATOL, rtol=RTOL)
        if need_weights:
            torch.testing.assert_close(weights.double(), ref_weights, atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------------------------
# 2. MultiHeadAttention against torch.nn.MultiheadAttention.


@pytest.mark.parametrize("need_weights", [False, True], ids=["fast", "weights"])
def test_multihead_matches_torch_multiheadattention(need_weights):
    torch.manual_seed(20)
    ours = make_attention("multihead")
    theirs = torch.nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True).eval()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.in_proj.weight)
        theirs.in_proj_bias.copy_(ours.in_proj.bias)
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(3, 8, D_MODEL)
    kpm = random_padding(3, 8)
    # torch's convention: True = may NOT attend.
    future = torch.ones(8, 8, dtype=torch.bool).triu(1)

    # Decoder-style self-attention: key padding + causal mask.
    out, w = ours(x, x, key_padding_mask=kpm, causal=True, need_weights=need_weights)
    ref, ref_w = theirs(
        x,
        x,
        x,
        key_padding_mask=kpm,
        attn_mask=future,
        need_weights=True,
        average_attn_weights=False,
    )
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    if need_weights:
        torch.testing.assert_close(w, ref_w, atol=ATOL, rtol=RTOL)

    # Causal mask alone (our fused is_causal path).
    out, _ = ours(x, x, causal=True, need_weights=need_weights)
    ref, _ = theirs(x, x, x, attn_mask=future, need_weights=False)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)

    # Cross-attention with key padding.
    memory = torch.randn(3, 5, D_MODEL)
    mem_kpm = random_padding(3, 5)
    out, w = ours(x, memory, key_padding_mask=mem_kpm, need_weights=need_weights)
    ref, ref_w = theirs(
        x,
        memory,
        memory,
        key_padding_mask=mem_kpm,
        need_weights=True,
        average_attn_weights=False,
    )
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    if need_weights:
        torch.testing.assert_close(w, ref_w, atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------------------------
# 3. Bahdanau: chunked == unchunked, forward and backward.


def _bahdanau_run(attn, query, memory, kpm, causal, grad_out):
    query = query.clone().requires_grad_(True)
    memory = query if memory is None else memory.clone().requires_grad_(True)
    attn.zero_grad(set_to_none=True)
    out, _ = attn(query, memory, key_padding_mask=kpm, causal=causal)
    (out * grad_out).sum().backward()
    grads = {name: p.grad.clone() for name, p in attn.named_parameters()}
    grads["query"] = query.grad.clone()
    if memory is not query:
        grads["memory"] = memory.grad.clone()
    return out.detach(), grads


@pytest.mark.parametrize(
    "setting, chunk_queries",
    [
        ("self_causal_padded", 1),  # (B, 1, L, S) mask sliced per chunk
        ("self_causal", 3),  # (L, S) mask sliced per chunk; 7 = 3 + 3 + 1
        ("cross_padded", 2),  # (B, 1, 1, S) mask shared by every chunk; 7 = 2 + 2 + 2 + 1
    ],
)
def test_bahdanau_chunked_equals_unchunked_outputs_and_gradients(
    setting, chunk_queries, monkeypatch
):
    torch.manual_seed(30)
    B, L, S = 3, 7, 6
    whole = make_attention("bahdanau").train()  # dropout is 0: train mode is deterministic
    chunked = copy.deepcopy(whole)
    query = torch.randn(B, L, D_MODEL)
    is_self = setting.startswith("self")
    memory = None if is_self else torch.randn(B, S, D_MODEL)
    n_keys = L if is_self else S
    kpm = random_padding(B, n_keys) if "padded" in setting else None
    causal = "causal" in setting
    dh = D_MODEL // HEADS
    # chunk_elements // (B·H·S·Dh) query positions per chunk.
    chunked.chunk_elements = chunk_queries * B * HEADS * n_keys * dh
    assert whole.chunk_elements >= L * B * HEADS * n_keys * dh  # the default is one chunk here

    grad_out = torch.randn(B, L, D_MODEL)
    out_whole, grads_whole = _bahdanau_run(whole, query, memory, kpm, causal, grad_out)
    calls = []
    original = attention_module._additive_gate
    monkeypatch.setattr(
        attention_module,
        "_additive_gate",
        lambda q, k: (calls.append(q.shape[2]), original(q, k))[1],
    )
    out_chunked, grads_chunked = _bahdanau_run(chunked, query, memory, kpm, causal, grad_out)

    # The chunked path really ran in chunks of `chunk_queries` query positions, in the forward
    # pass and again in the backward pass (which recomputes the gate).
    sizes = [chunk_queries] * (L // chunk_queries) + (
        [L % chunk_queries] if L % chunk_queries else []
    )
    assert calls == sizes + sizes
    torch.testing.assert_close(out_chunked, out_whole, atol=1e-6, rtol=1e-5)
    assert grads_chunked.keys() == grads_whole.keys()
    for name in grads_whole:
        torch.testing.assert_close(
            grads_chunked[name], grads_whole[name], atol=1e-5, rtol=1e-5, msg=name
        )
    # ...and both equal the reference.
    mem = query if memory is None else memory
    ref, _ = reference_attention(whole, "bahdanau", query, mem, kpm, causal)
    torch.testing.assert_close(out_whole.double(), ref, atol=ATOL, rtol=RTOL)


def test_bahdanau_chunked_gradients_match_float64_autograd():
    """Gradients of the chunked path (hand-written backward) against autograd in float64."""
    torch.manual_seed(31)
    attn = make_attention("bahdanau").train()
    attn.chunk_elements = 1  # one query position per chunk
    x = torch.randn(2, 5, D_MODEL)
    kpm = random_padding(2, 5)
    grad_out = torch.randn(2, 5, D_MODEL)
    _, grads = _bahdanau_run(attn, x, None, kpm, True, grad_out)

    ref_attn = copy.deepcopy(attn).double()
    ref_attn.chunk_elements = 1 << 30
    x64 = x.double().requires_grad_(True)
    out64, _ = ref_attn(x64, x64, key_padding_mask=kpm, causal=True)
    (out64 * grad_out.double()).sum().backward()
    torch.testing.assert_close(grads["query"].double(), x64.grad, atol=1e-5, rtol=1e-4)
    for name, p in ref_attn.named_parameters():
        torch.testing.assert_close(grads[name].double(), p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_bahdanau_chunked_equals_unchunked_in_eval_mode():
    """Without grad (inference) chunking gives the same results too."""
    torch.manual_seed(32)
    whole = make_attention("bahdanau", cross=True)
    chunked = copy.deepcopy(whole)
    chunked.chunk_elements = 1
    query, memory = torch.randn(2, 6, D_MODEL), torch.randn(2, 8, D_MODEL)
    kpm = random_padding(2, 8)
    with torch.no_grad():
        a, _ = whole(query, memory, key_padding_mask=kpm)
        b, _ = chunked(query, memory, key_padding_mask=kpm)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# 4. Padding invariance and causality.


@pytest.mark.parametrize("kind", MECHANISMS)
def test_extra_padded_keys_do_not_change_cross_attention(kind):
    torch.manual_seed(40)
    attn = make_attention(kind, cross=True)
    query, memory = torch.randn(3, 5, D_MODEL), torch.randn(3, 6, D_MODEL)
    kpm = random_padding(3, 6)
    base, base_w = attn(query, memory, key_padding_mask=kpm, need_weights=True)
    base_fast, _ = attn(query, memory, key_padding_mask=kpm)
    extra = 100.0 * torch.randn(3, 3, D_MODEL)  # large garbage at the padded keys
    memory2 = torch.cat([memory, extra], dim=1)
    kpm2 = torch.cat([kpm, torch.ones(3, 3, dtype=torch.bool)], dim=1)
    out, w = attn(query, memory2, key_padding_mask=kpm2, need_weights=True)
    out_fast, _ = attn(query, memory2, key_padding_mask=kpm2)
    torch.testing.assert_close(out, base, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out_fast, base_fast, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(w[..., :6], base_w, atol=ATOL, rtol=RTOL)
    assert torch.all(w[..., 6:] == 0)
    # Changing what sits under already-padded keys changes nothing either.
    memory3 = memory.clone()
    memory3[kpm] = 50.0 * torch.randn(int(kpm.sum()), D_MODEL)
    torch.testing.assert_close(
        attn(query, memory3, key_padding_mask=kpm)[0], base_fast, atol=ATOL, rtol=RTOL
    )


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", MECHANISMS)
def test_appended_padded_positions_do_not_change_self_attention(kind, causal):
    """Self-attention over a sequence extended with padded positions: real positions agree."""
    torch.manual_seed(41)
    attn = make_attention(kind)
    x = torch.randn(3, 6, D_MODEL)
    kpm = random_padding(3, 6)
    base, _ = attn(x, x, key_padding_mask=kpm, causal=causal)
    x2 = torch.cat([x, 30.0 * torch.randn(3, 3, D_MODEL)], dim=1)
    kpm2 = torch.cat([kpm, torch.ones(3, 3, dtype=torch.bool)], dim=1)
    out, _ = attn(x2, x2, key_padding_mask=kpm2, causal=causal)
    torch.testing.assert_close(out[:, :6], base, atol=ATOL, rtol=RTOL)
    # The unpadded batch, row by row, sees the same keys as a batch with no padding at all.
    lengths = [3, 5, 6]
    kpm3 = torch.arange(6)[None, :] >= torch.tensor(lengths)[:, None]
    batched, _ = attn(x, x, key_padding_mask=kpm3, causal=causal)
    for b, n in enumerate(lengths):
        alone, _ = attn(x[b : b + 1, :n], x[b : b + 1, :n], causal=causal)
        torch.testing.assert_close(batched[b : b + 1, :n], alone, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kind", MECHANISMS)
def test_causal_attention_ignores_future_keys_and_values(kind):
    torch.manual_seed(42)
    attn = make_attention(kind)
    x = torch.randn(2, 8, D_MODEL)
    kpm = random_padding(2, 8)
    for mask in (None, kpm):
        base, _ = attn(x, x, key_padding_mask=mask, causal=True)
        for t in (2, 6):
            changed = x.clone()
            changed[:, t:] = 10.0 * torch.randn(2, 8 - t, D_MODEL)
            out, _ = attn(changed, changed, key_padding_mask=mask, causal=True)
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=ATOL, rtol=RTOL)
            assert not torch.allclose(out[:, t:], base[:, t:], atol=1e-3)
            # Separate key/value source: only the future of the memory changes.
            mem = x.clone()
            mem[:, t:] = 10.0 * torch.randn(2, 8 - t, D_MODEL)
            out, _ = attn(x, mem, key_padding_mask=mask, causal=True)
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=ATOL, rtol=RTOL)
    # Sanity: without the causal mask the same change does reach earlier positions.
    changed = x.clone()
    changed[:, 4:] += 1.0
    assert not torch.allclose(attn(changed, changed)[0][:, :4], attn(x, x)[0][:, :4], atol=1e-4)


@pytest.mark.parametrize("keys", [1, 5, 12, 13, 30])
def test_single_query_weighted_sum_equals_matmul(keys: int) -> None:
    """A decoding step's weights @ values, summed by broadcasting where PyTorch's bmm would take
    its small-matrix loop, gives exactly the product's values (the same terms, added in the
    same order), and is the product itself above that bound."""
    g = torch.Generator().manual_seed(keys)
    weights = torch.randn(6, 4, 1, keys, generator=g).softmax(-1)
    values = torch.randn(6, 4, keys, 32, generator=g)
    assert torch.equal(attention_module.weighted_sum(weights, values), weights @ values)


def test_step_log_probs_in_place_equal_log_softmax() -> None:
    """The decoding step's in-place log-softmax writes what F.log_softmax returns; tensors it
    may not overwrite (strided, half precision, needing gradients) are left alone."""
    from nmt.models.base import next_token_log_probs

    logits = torch.randn(7, 300, generator=torch.Generator().manual_seed(0)) * 5
    want = F.log_softmax(logits, dim=-1)
    work = logits.clone()
    got = next_token_log_probs(work)
    assert torch.equal(got, want) and got.data_ptr() == work.data_ptr()
    strided = logits.t().contiguous().t()
    assert torch.equal(next_token_log_probs(strided), want) and torch.equal(strided, logits)
    half = logits.bfloat16()
    out = next_token_log_probs(half)
    assert out.dtype == torch.float32 and torch.equal(half, logits.bfloat16())
    grad = logits.clone().requires_grad_()
    assert torch.equal(next_token_log_probs(grad).detach(), want)
