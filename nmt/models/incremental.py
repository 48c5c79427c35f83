"""The Transformer's decoding step: what a search calls once per output position.

A search feeds each hypothesis one new token per step. Everything the step can compute ahead
is computed once:

- the cross-attention's keys and values of the source, for every decoder layer, projected once
  when the batch starts;
- the self-attention's keys and values of the positions decoded so far, written in place into
  buffers that grow by whole blocks of positions, so a step appends without copying the past
  (`torch.cat` copied every layer's cache at every step);
- the source padding mask, in the shape the scores broadcast against.

The hypotheses of one sentence (beam search's K rows) share its source: its keys and values
are kept once, and the K queries attend to them together.

A step is then the layers' arithmetic written out for its few new positions, with no mask
built and no module other than the linear layers called (a one-sentence step was a few hundred
small operators, where Python's overhead cost more than the arithmetic:
docs/experiments/decoding.md, "Issue 38"). When beam search moves hypotheses, only the rows
that changed are copied.

`Transformer.start`, `step` and `reorder` are these functions; the model's own forward pass
(training, teacher forcing) does not use them, and tests hold the two equal.

`Transformer.compile_decoding()` (`nmt translate --compile`) runs `source_side` and the step
compiled instead (nmt.models.compiled), with an eager fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nmt.models.attention import weighted_sum
from nmt.models.base import next_token_log_probs

# The self-attention cache grows by this many positions at a time: about the memory of a cache
# that holds exactly the positions decoded (peak memory stays where it was), with a copy of the
# past only every BLOCK steps.
BLOCK = 16


@dataclass
class TransformerState:
    """What decoding a batch needs between steps, one row per hypothesis."""

    # Layer i's keys at 2i, its values at 2i + 1: the source's (rows, heads, S, d_head) and
    # the decoded positions' (rows, heads, capacity, d_head), zero from `length` on (the
    # compiled step reads whole buffers, masking those positions: weights of 0 times
    # uninitialised memory could be NaN). Tensors of their own with rows first, not one
    # stacked tensor: a reorder is then a fast `index_select` along the first dimension (along
    # an inner one it took 10x as long), and an allocation of each stays below the size where
    # every new one costs page faults.
    cross_kv: list[torch.Tensor]
    may_attend: torch.Tensor  # (sources, 1, 1, S), False at source padding
    self_kv: list[torch.Tensor]
    length: int = 0  # target positions decoded so far
    # Rows per source: a beam's hypotheses share their sentence's keys and values, which are
    # kept once and read by the group's queries together (no copy per hypothesis).
    group: int = 1
    # A shortlist: the target ids the search may choose, and their rows of the output layer.
    vocab: torch.Tensor | None = None
    vocab_weight: torch.Tensor | None = None
    vocab_bias: torch.Tensor | None = None


def start(model, src: torch.Tensor, vocab: torch.Tensor | None = None) -> TransformerState:
    """Encode a batch and project every layer's cross-attention keys and values once; with
    `vocab` (sorted target ids), take the output layer's rows for them once."""
    compiled = model.compiled_decoder
    out = compiled.source_side(src) if compiled is not None else None
    cross_kv, may_attend = out if out is not None else source_side(model, src)
    self_kv = []
    for layer, kv in zip(model.decoder_layers, cross_kv[::2]):
        attn = layer.self_attn
        self_kv += [kv.new_zeros(src.shape[0], attn.heads, BLOCK, attn.head_dim) for _ in "kv"]
    state = TransformerState(cross_kv, may_attend, self_kv)
    if vocab is not None:
        state.vocab = vocab.to(src.device)
        # The output layer is the target embedding (tied); the embedding's float table, since
        # int8 quantization replaces the output layer's module.
        state.vocab_weight = model.tgt_embed.weight.index_select(0, state.vocab)
        if model.cfg.output_bias:
            state.vocab_bias = model.output_bias.index_select(0, state.vocab)
    return state


def source_side(model, src: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Encode a batch: every decoder layer's cross-attention keys and values of it (layer i's
    keys at 2i, values at 2i + 1, each (sources, heads, S, d_head)), and where a query may
    attend ((sources, 1, 1, S), False at padding)."""
    memory, pad_mask = model.encode(src)
    rows, S, _ = memory.shape
    cross_kv = []
    for layer in model.decoder_layers:
        attn = layer.cross_attn
        heads, d_head = attn.heads, attn.head_dim
        k, v = attn.kv_proj(memory).view(rows, S, 2, heads, d_head).permute(2, 0, 3, 1, 4)
        cross_kv += [k.contiguous(), v.contiguous()]
    return cross_kv, ~pad_mask[:, None, None, :]


def _grow(state: TransformerState, needed: int) -> None:
    capacity = state.self_kv[0].shape[2]
    if needed <= capacity:
        return
    grown = -(-needed // BLOCK) * BLOCK
    for j, kv in enumerate(state.self_kv):
        bigger = kv.new_zeros(kv.shape[0], kv.shape[1], grown, kv.shape[3])
        bigger[:, :, : state.length] = kv[:, :, : state.length]
        state.self_kv[j] = bigger


def _attend(attn, q, k, v, may_attend):
    """softmax(scores(q, k)) v for a few new queries. On the CPU the product is written out:
    PyTorch's fused kernel works on blocks of queries and lost to it for one query a row
    (a beam-5 pass: 4.70 s against 3.43 s; docs/experiments/decoding.md)."""
    if q.device.type != "cpu":
        return attn.attend(q, k, v, may_attend, False)
    scores = attn.scores(q, k)
    if may_attend is not None:
        scores = scores.masked_fill(~may_attend, float("-inf"))
    return weighted_sum(scores.softmax(dim=-1), v)


def feed_forward(layer, x: torch.Tensor) -> torch.Tensor:
    return layer.ff_block.add(x, layer.ff(layer.ff_block.input(x)))


def _is_identity(index: torch.Tensor, rows: int) -> bool:
    return index.numel() == rows and bool(index.eq(torch.arange(rows, device=index.device)).all())


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    b, h, n, d = out.shape  # (B, H, N, Dh) -> (B, N, H*Dh)
    return out.transpose(1, 2).reshape(b, n, h * d)


def next_log_probs(model, state: TransformerState, tokens: torch.Tensor) -> torch.Tensor:
    """Feed `tokens` (rows, n): the log-probabilities (rows, V) of the token after the last.
    One new token a row goes through the compiled step, where the model has one."""
    at, compiled = state.length, model.compiled_decoder
    if compiled is not None and tokens.shape[1] == 1 and at < model.cfg.max_positions:
        _grow(state, at + 1)
        out = compiled.step(tokens, at, state)
        if out is not None:
            for kv, one in zip(state.self_kv, out[1]):
                kv[:, :, at : at + 1] = one
            state.length += 1
            return out[0]
    return log_probs(model, state, step(model, state, tokens)[:, -1])


def step(model, state: TransformerState, tokens: torch.Tensor) -> torch.Tensor:
    """Feed `tokens` (rows, n): the decoder's output states (rows, n, d_model) of the n new
    positions, each seeing the positions before it; the cache advances by n."""
    at, n = state.length, tokens.shape[1]
    _grow(state, at + n)
    x = decoder(model, tokens, at, state.self_kv, state.cross_kv, state.may_attend, state.group)
    state.length += n
    return x


def decoder(
    model,
    tokens: torch.Tensor,
    at: int,
    self_kv: list[torch.Tensor],
    cross_kv: list[torch.Tensor],
    may_attend: torch.Tensor,
    group: int = 1,
) -> torch.Tensor:
    """The decoder layers on new positions at..at+n; writes their keys and values into
    `self_kv`, which has room for them. Each `group` of consecutive rows reads one source row
    of `cross_kv`."""
    rows, n = tokens.shape
    end = at + n
    x = model.embed_target(tokens, at)
    causal = None
    if n > 1:  # new position j sees the cache and new positions up to j
        causal = torch.ones(n, end, dtype=torch.bool, device=x.device).tril(diagonal=at)
    for i, layer in enumerate(model.decoder_layers):
        attn = layer.self_attn
        block = layer.self_block
        h = block.input(x)
        heads, d_head = attn.heads, attn.head_dim
        qkv = attn.in_proj(h).view(rows, n, 3, heads, d_head).permute(2, 0, 3, 1, 4)
        k, v = self_kv[2 * i], self_kv[2 * i + 1]
        k[:, :, at:end], v[:, :, at:end] = qkv[1], qkv[2]
        k, v = k[:, :, :end], v[:, :, :end]
        out = attn.out_proj(merge_heads(_attend(attn, qkv[0], k, v, causal)))
        x = block.add(x, out)

        attn = layer.cross_attn
        block = layer.cross_block
        h = block.input(x)
        q = attn.q_proj(h).view(rows // group, group * n, heads, d_head).transpose(1, 2)
        out = _attend(attn, q, cross_kv[2 * i], cross_kv[2 * i + 1], may_attend)
        out = attn.out_proj(merge_heads(out).view(rows, n, heads * d_head))
        x = block.add(x, out)

        x = feed_forward(layer, x)
    return model.decoder_norm(x)


def reorder(
    state: TransformerState, order: torch.Tensor, source_order: torch.Tensor | None = None
) -> None:
    """Rows of the decoder's cache by `order`, of the source side by `source_order` (None:
    the source side stays). When no row moved, nothing is copied. Otherwise the decoded
    positions are copied once, into new buffers with room for exactly the next position: beam
    search reorders at every step, so its buffers stay full, hence contiguous, and
    `index_select` takes its fast path (on a strided view it was 2x slower; `index_select`
    then `cat`, as before, took three times as long for 320 rows)."""
    rows, t = state.self_kv[0].shape[0], state.length
    if not _is_identity(order, rows):
        moved = []
        for kv in state.self_kv:
            new = kv.new_empty(order.numel(), kv.shape[1], t + 1, kv.shape[3])
            torch.index_select(kv[:, :, :t], 0, order, out=new[:, :, :t])
            new[:, :, t:].zero_()
            moved.append(new)
        state.self_kv = moved
    if source_order is not None:
        _reorder_source(state, source_order // state.group)


def _reorder_source(state: TransformerState, source: torch.Tensor) -> None:
    """New rows read source rows `source`. When they come in equal runs (beam search: K rows a
    sentence) the source side keeps one row per run; otherwise one per row."""
    group = int(source.eq(source[0]).sum())
    runs = source.view(-1, group) if source.numel() % group == 0 else None
    if runs is not None and bool(runs.eq(runs[:, :1]).all()):
        source = runs[:, 0]
    else:
        group = 1
    state.group = group
    if _is_identity(source, state.may_attend.shape[0]):
        return
    state.cross_kv = [kv.index_select(0, source) for kv in state.cross_kv]
    state.may_attend = state.may_attend.index_select(0, source)


def log_probs(model, state: TransformerState, states: torch.Tensor) -> torch.Tensor:
    """Decoder output states (rows, d_model) -> next-token log-probabilities (rows, V); with a
    shortlist, projected onto its tokens only and renormalised over them (-inf elsewhere)."""
    return vocabulary_log_probs(model, states, state.vocab, state.vocab_weight, state.vocab_bias)


def vocabulary_log_probs(
    model,
    states: torch.Tensor,
    vocab: torch.Tensor | None,
    vocab_weight: torch.Tensor | None,
    vocab_bias: torch.Tensor | None,
    log_softmax=next_token_log_probs,
) -> torch.Tensor:
    """`log_probs` from the shortlist's parts (TransformerState), with `log_softmax` (the
    compiled step passes a functional one: `next_token_log_probs` writes into its input)."""
    if vocab is None:
        return log_softmax(model.project(states))
    logits = F.linear(states, vocab_weight, vocab_bias)
    full = logits.new_full((states.shape[0], model.output_projection.out_features), -math.inf)
    return full.index_copy_(1, vocab, log_softmax(logits).to(full.dtype))
