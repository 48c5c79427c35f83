"""Recurrent encoder-decoders with attention as first published, Bahdanau et al. (2015) and Luong
et al. (2015), built from a ModelConfig with `arch: rnn` (d_model: the embedding size E;
hidden_size: H; rnn_type: GRU or LSTM cells).

Encoder (both): the source embeddings -> a bidirectional RNN of `encoder_layers` layers, H/2
units per direction, dropout between layers. The source is packed, so padding never enters it.
What attention reads, one state per source position:
    h_j = [→h_j; ←h_j] ∈ R^H                        (the top layer's two directions)
    α_ij = exp(e_ij) / Σ_k exp(e_ik)                 (k: the sentence's real positions only)
    c_i = Σ_j α_ij h_j
Scores (`GlobalAttention`; keys depend on the source only, so they are computed once per
sentence when decoding starts):
    additive:  e_ij = vᵀ tanh(W q_i + U h_j)       (Bahdanau's, and Luong's `concat`:
                                                     vᵀ tanh(W_a [q_i; h_j]) with W_a = [W U])
    dot:       e_ij = q_iᵀ h_j
    general:   e_ij = q_iᵀ W_a h_j

Bahdanau (`attention: bahdanau`), step i reads y_{i-1}; s is the top decoder layer's state:
    e_ij = vᵀ tanh(W s_{i-1} + U h_j)
    s_i = RNN([E y_{i-1}; c_i], s_{i-1})
    t̃_i = U_o s_i + C_o c_i + V_o E y_{i-1} + b_o ∈ R^{2E}    (deep output)
    t_i = [max(t̃_{i,2k-1}, t̃_{i,2k})]_{k=1..E}              (maxout)
    p(y_i) = softmax(W_o Dropout(t_i)),  W_o = E (the target embedding: tied)
    s_0 = tanh(W_s ←h_1) for every decoder layer             (LSTM memory cells start at 0)
The output layer reads s_i, the state after the step, as the paper's equation (4) has it,
p(y_i) = g(y_{i-1}, s_i, c_i) (its appendix writes s_{i-1}; Nematus and dl4mt read s_i too): the
prediction then sees the state that has already taken in c_i and y_{i-1}. The maxout emits E
values (the paper: 500, for 620-wide embeddings), so W_o is the embedding matrix itself.

Luong (`attention: luong`, `luong_score: dot | general | concat`), step t:
    h_t = RNN([E y_{t-1}; h̃_{t-1}], h_{t-1})      (input feeding, h̃_0 = 0; without it
                                                     RNN(E y_{t-1}, h_{t-1}), one call for all t)
    e_ts = score(h_t, h_s)  (above, with q = h_t);  c_t = Σ_s α_ts h_s
    h̃_t = Dropout(tanh(W_c [c_t; h_t]))
    p(y_t) = softmax(W_s h̃_t),  W_s = E (tied) when H = E, else a matrix of its own
    decoder layer l starts from encoder layer l's final states [→h_{|x|}; ←h_1] (h, and c)

Dropout (model.dropout): on the source and target embeddings, between stacked RNN layers, and on
the vector the output layer reads (for Luong, also what input feeding passes on).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.config import ModelConfig
from nmt.data.tokenizer import PAD
from nmt.errors import NmtError
from nmt.models.base import Dropout, EncoderDecoder, next_token_log_probs

# A GRU's state (layers, B, H), or an LSTM's (h, c).
Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class RNNState:
    """What decoding a batch needs between steps. Source rows: the encoder states, their keys
    and padding mask. Decoder rows: the decoder RNN's state and Luong's h̃_{t-1}."""

    memory: torch.Tensor  # (B, S, H): h_j
    keys: torch.Tensor  # (B, S, H): 2 U h_j (additive, see GlobalAttention), W_a h_j, or h_j (dot)
    pad_mask: torch.Tensor  # (B, S), True at padding
    hidden: Hidden  # (layers, B, H)
    feed: torch.Tensor | None  # (B, H): h̃_{t-1} (Luong with input feeding), else None


def _rnn(cfg: ModelConfig, input_size: int, hidden_size: int, layers: int, **kwargs) -> nn.RNNBase:
    cell = nn.GRU if cfg.rnn_type == "gru" else nn.LSTM
    dropout = cfg.dropout if layers > 1 else 0.0  # torch applies it between layers only
    return cell(input_size, hidden_size, layers, batch_first=True, dropout=dropout, **kwargs)


def _initialise(rnn: nn.RNNBase) -> None:
    """Glorot-uniform weights, one gate at a time, and an LSTM's forget gate opened (bias 1),
    as JoeyNMT initialises its recurrent models. With PyTorch's default (uniform ±1/√H) and
    its default for W_c and the output layer, the Luong model learned the toy task far slower
    than JoeyNMT's at the same shape: validation perplexity 3.58 after 300 updates against
    JoeyNMT's 1.95 and 1.60 with this (docs/experiments/attention.md, "Why the Luong RNN
    learned slowly"). The Bahdanau model keeps PyTorch's default: there it moved little."""
    gates = 4 if isinstance(rnn, nn.LSTM) else 3
    size = rnn.hidden_size
    with torch.no_grad():
        for name, value in rnn.named_parameters():
            if name.startswith("weight"):
                for gate in value.chunk(gates, 0):
                    nn.init.xavier_uniform_(gate)
            elif isinstance(rnn, nn.LSTM):  # gates i, f, g, o: the two biases add up
                value[size : 2 * size] = 1.0 if name.startswith("bias_ih") else 0.0


def _top(hidden: Hidden) -> torch.Tensor:
    """The top layer's state (B, H) (an LSTM's h, not its memory cell)."""
    return hidden[0][-1] if isinstance(hidden, tuple) else hidden[-1]


def _select(hidden: Hidden, order: torch.Tensor) -> Hidden:
    if isinstance(hidden, tuple):
        return tuple(h.index_select(1, order) for h in hidden)
    return hidden.index_select(1, order)


def _join_directions(final: torch.Tensor) -> torch.Tensor:
    """A bidirectional RNN's final states (2·layers, B, H/2) -> (layers, B, H), [→h; ←h]."""
    layers, batch = final.shape[0] // 2, final.shape[1]
    return final.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1)


class GlobalAttention(nn.Module):
    """One attention head over all source positions: `additive` (Bahdanau; Luong's concat),
    `dot` or `general` scores, then the masked softmax and the context vector."""

    def __init__(self, hidden_size: int, score: str):
        super().__init__()
        self.score = score
        if score in ("additive", "general"):
            self.key = nn.Linear(hidden_size, hidden_size, bias=False)  # U, or W_a
        if score == "general":
            # W_a starts at the identity (the dot score) plus noise, as in nmt.models.attention: the
            # default initialisation shrinks the scores and the attention learns much slower.
            with torch.no_grad():
                self.key.weight.copy_(
                    torch.eye(hidden_size) + 0.02 * torch.randn_like(self.key.weight)
                )
        if score == "additive":
            self.query = nn.Linear(hidden_size, hidden_size, bias=False)  # W
            bound = hidden_size**-0.5
            self.v = nn.Parameter(torch.empty(hidden_size).uniform_(-bound, bound))

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """What the scores compare queries with, per source position: 2 U h_j, W_a h_j or h_j."""
        if self.score == "additive":
            return self.key(memory) * 2  # doubled once per sentence, not at every step
        return memory if self.score == "dot" else self.key(memory)

    def forward(self, query: torch.Tensor, state: RNNState) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, H) -> context vectors (B, T, H) and weights α (B, T, S)."""
        if self.score == "additive":
            # vᵀ tanh(x) = 2 vᵀ σ(2x) − Σ v: PyTorch's CPU sigmoid is 3.5x faster than its tanh
            # (nmt.models.attention._AdditiveScores; docs/experiments/attention.md).
            gate = torch.sigmoid(self.query(query)[:, :, None] * 2 + state.keys[:, None])
            scores = gate @ (self.v * 2) - self.v.sum()  # (B, T, S)
        else:
            scores = query @ state.keys.transpose(1, 2)
        scores = scores.masked_fill(state.pad_mask[:, None], float("-inf"))
        weights = scores.softmax(dim=-1)
        return weights @ state.memory, weights


class BahdanauDecoder(nn.Module):
    """s_i = RNN([E y_{i-1}; c_i], s_{i-1}), attention from s_{i-1}, a maxout deep output."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, H = cfg.d_model, cfg.hidden_size
        self.layers = cfg.decoder_layers
        self.init_state = nn.Linear(H // 2, self.layers * H, bias=False)  # W_s
        self.attention = GlobalAttention(H, "additive")
        self.rnn = _rnn(cfg, E + H, H, self.layers)
        self.maxout = nn.Linear(2 * H + E, 2 * E)  # [U_o C_o V_o] and b_o
        self.dropout = Dropout(cfg.dropout)
        self.output_size = E

    def start(self, memory: torch.Tensor, final: Hidden, pad_mask: torch.Tensor) -> RNNState:
        h = _join_directions(final[0] if isinstance(final, tuple) else final)
        backward_first = h[-1, :, h.shape[-1] // 2 :]  # ←h_1 of the top layer
        s0 = torch.tanh(self.init_state(backward_first))  # (B, layers · H)
        s0 = s0.view(s0.shape[0], self.layers, -1).transpose(0, 1).contiguous()
        hidden = (s0, torch.zeros_like(s0)) if isinstance(final, tuple) else s0
        return RNNState(memory, self.attention.keys(memory), pad_mask, hidden, None)

    def forward(self, state: RNNState, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed the embedded target tokens (B, T, E) one at a time: the output layer's input
        Dropout(t_i) (B, T, E) and the attention weights (B, T, S). The state advances."""
        states, contexts, weights = [], [], []
        # unbind, not emb[:, i]: the gradient of each slice would be a zero-filled (B, T, E).
        for e in emb.unbind(1):
            context, alpha = self.attention(_top(state.hidden)[:, None], state)
            s, state.hidden = self.rnn(torch.cat([e[:, None], context], -1), state.hidden)
            states.append(s)
            contexts.append(context)
            weights.append(alpha)
        # The deep output of every position at once, outside the recurrence.
        t = self.maxout(torch.cat([torch.cat(states, 1), torch.cat(contexts, 1), emb], -1))
        t = t.unflatten(-1, (-1, 2)).amax(-1)
        return self.dropout(t), torch.cat(weights, 1)


class LuongDecoder(nn.Module):
    """h_t = RNN(...), global attention from h_t, h̃_t = tanh(W_c [c_t; h_t]), input feeding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, H = cfg.d_model, cfg.hidden_size
        self.input_feeding = cfg.input_feeding
        self.rnn = _rnn(cfg, E + H if self.input_feeding else E, H, cfg.decoder_layers)
        score = "additive" if cfg.luong_score == "concat" else cfg.luong_score
        self.attention = GlobalAttention(H, score)
        self.combine = nn.Linear(2 * H, H, bias=False)  # W_c
        nn.init.xavier_uniform_(self.combine.weight)  # (see _initialise)
        self.dropout = Dropout(cfg.dropout)
        self.output_size = H

    def start(self, memory: torch.Tensor, final: Hidden, pad_mask: torch.Tensor) -> RNNState:
        if isinstance(final, tuple):
            hidden = tuple(_join_directions(f).contiguous() for f in final)
        else:
            hidden = _join_directions(final).contiguous()
        feed = memory.new_zeros(memory.shape[0], memory.shape[2]) if self.input_feeding else None
        return RNNState(memory, self.attention.keys(memory), pad_mask, hidden, feed)

    def _attentional(self, h: torch.Tensor, state: RNNState) -> tuple[torch.Tensor, torch.Tensor]:
        context, weights = self.attention(h, state)
        return self.dropout(torch.tanh(self.combine(torch.cat([context, h], -1)))), weights

    def forward(self, state: RNNState, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed the embedded target tokens (B, T, E): Dropout(h̃_t) (B, T, H) and the attention
        weights (B, T, S). The state advances."""
        if not self.input_feeding:  # nothing flows back into the RNN: one call for all t
            h, state.hidden = self.rnn(emb, state.hidden)
            return self._attentional(h, state)
        outputs, weights = [], []
        for e in emb.unbind(1):  # (see BahdanauDecoder.forward)
            x = torch.cat([e[:, None], state.feed[:, None]], -1)
            h, state.hidden = self.rnn(x, state.hidden)
            out, alpha = self._attentional(h, state)
            state.feed = out[:, 0]
            outputs.append(out)
            weights.append(alpha)
        return torch.cat(outputs, 1), torch.cat(weights, 1)


class RNNModel(EncoderDecoder):
    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, share_all: bool):
        super().__init__()
        self.cfg = cfg
        self.tgt_embed = _embedding(tgt_vocab, cfg.d_model)
        if share_all:
            if src_vocab != tgt_vocab:
                raise ValueError("shared embeddings need one vocabulary")
            self.src_embed = self.tgt_embed
        else:
            self.src_embed = _embedding(src_vocab, cfg.d_model)
        self.dropout = Dropout(cfg.dropout)
        self.encoder = _rnn(
            cfg, cfg.d_model, cfg.hidden_size // 2, cfg.encoder_layers, bidirectional=True
        )
        self.decoder = BahdanauDecoder(cfg) if cfg.attention == "bahdanau" else LuongDecoder(cfg)
        if cfg.attention == "luong":
            _initialise(self.encoder)
            _initialise(self.decoder.rnn)
        # A module of its own, tied to the target embedding where the sizes match, so that int8
        # quantization can replace it (the embedding lookup keeps the float table).
        size = self.decoder.output_size
        self.output_projection = nn.Linear(size, tgt_vocab, bias=False)
        if size == cfg.d_model:
            self.output_projection.weight = self.tgt_embed.weight
        else:
            nn.init.xavier_uniform_(self.output_projection.weight)  # (see _initialise)

    @property
    def max_source_length(self) -> int:
        # No position table bounds an RNN; model.max_positions keeps its meaning (the longest
        # sequence, 1024 by default) so that a search stays bounded and runaway input is cut.
        return self.cfg.max_positions - 1  # room for EOS

    @property
    def max_output_length(self) -> int:
        return self.cfg.max_positions - 1  # room for BOS

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, Hidden, torch.Tensor]:
        """src (B, S) -> h_j (B, S, H), the final states of every layer and direction, and the
        padding mask (B, S)."""
        pad_mask = src.eq(PAD)
        lengths = pad_mask.logical_not().sum(1).cpu()
        x = self.dropout(self.src_embed(src))
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        return memory, final, pad_mask

    def _embed_target(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.tgt_embed(tokens))

    # -- training ------------------------------------------------------------------------------

    def features(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: what the output projection reads (B, T, output size)."""
        out, _ = self.decoder(self.start(src), self._embed_target(tgt_in))
        return out

    def project(self, states: torch.Tensor) -> torch.Tensor:
        return self.output_projection(states)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(src, tgt_in))

    def cross_attention(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        _, weights = self.decoder(self.start(src), self._embed_target(tgt_in))
        return weights.float()

    # -- search --------------------------------------------------------------------------------

    def start(self, src: torch.Tensor, vocab: torch.Tensor | None = None) -> RNNState:
        if vocab is not None:
            raise NmtError("a shortlist needs a Transformer model; RNN models decode without")
        return self.decoder.start(*self.encode(src))

    def step(self, state: RNNState, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.decoder(state, self._embed_target(tokens))
        return next_token_log_probs(self.project(out[:, -1]))

    def reorder(
        self, state: RNNState, order: torch.Tensor, source_order: torch.Tensor | None = None
    ) -> None:
        state.hidden = _select(state.hidden, order)
        if state.feed is not None:
            state.feed = state.feed.index_select(0, order)
        if source_order is not None:
            keys_are_memory = state.keys is state.memory  # dot scores: one tensor, select once
            state.memory = state.memory.index_select(0, source_order)
            state.pad_mask = state.pad_mask.index_select(0, source_order)
            if keys_are_memory:
                state.keys = state.memory
            else:
                state.keys = state.keys.index_select(0, source_order)


def _embedding(vocab: int, dim: int) -> nn.Embedding:
    embedding = nn.Embedding(vocab, dim, padding_idx=PAD)
    nn.init.normal_(embedding.weight, 0.0, dim**-0.5)
    nn.init.zeros_(embedding.weight[PAD])
    return embedding
