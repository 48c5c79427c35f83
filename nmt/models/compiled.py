"""The Transformer's decoding compiled (`nmt translate --compile`, `nmt serve --compile`).

A search calls two functions of the model: once per batch, `source_side` (encode the source,
project every decoder layer's cross-attention keys and values), and once per output position,
`decoder_step` below. One sentence at a time, each is a few hundred small operators, and the
cost of calling them from Python, not their arithmetic, sets the speed
(docs/experiments/decoding.md).

On the CPU both are compiled ahead of time with AOTInductor (`torch.export`, then
`torch._inductor.aoti_compile_and_package`): a shared library per function, which runs its
kernels from C++ with no Python between them and no guards checked per call; the weights are
compiled in (inductor's freezing: linear layers get prepacked weights), and each matrix product
is whichever of inductor's C++ GEMM template and ATen's measured faster (max-autotune). A
library takes 30-60 s to build, so it is kept on disk under a key of the weights, the model's
code, torch, the CPU's vector instructions and the thread count (`NMT_CACHE_DIR`, else
~/.cache/nmt, then compiled/): the next process loads it in milliseconds. On other devices
the same functions go through `torch.compile` (not measured: no GPU was lent to this work).

A library accepts any number of sentences, source length and cache capacity, but not any
layout: it was built for contiguous inputs and would read a strided view wrongly (it does not
check), so every input is made contiguous first. The cache is not sliced for it: the step reads
the cache's whole buffers and takes the number of positions decoded as a tensor, masking the
positions from it on; the cache keeps those positions zero (nmt.models.incremental), since a
masked weight of 0 times garbage could be NaN. The hypotheses per sentence (`group`: 1 for
greedy search, K for beam search) are fixed per library.

Any failure to compile or run warns once, and from then on `CompiledDecoding` returns None,
for the caller's eager functions; nothing is lost, since neither library writes into its
inputs.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nmt.models import attention, incremental

log = logging.getLogger("nmt")


def decoder_step(
    model,
    tokens: torch.Tensor,
    at: torch.Tensor,
    self_kv: list[torch.Tensor],
    cross_kv: list[torch.Tensor],
    may_attend: torch.Tensor,
    group: int,
    vocab: torch.Tensor | None = None,
    vocab_weight: torch.Tensor | None = None,
    vocab_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`incremental.decoder` and `incremental.log_probs` for one new position, written for a
    compiler: `tokens` (rows, 1) at position `at` (a (1,) int64 tensor: the positions decoded
    so far), `self_kv` the cache's whole buffers (rows, heads, capacity, d_head), zero from
    `at` on; `vocab`, `vocab_weight`, `vocab_bias` a shortlist (TransformerState). Returns the
    next token's log-probabilities (rows, V) and the new position's keys and values, for the
    caller to write: a compiled graph that writes into its input copied the whole buffer on
    every call (320 rows: 74 ms a step against 14 eager). The new key is attended apart from the past ones,
    which are masked from `at` on; the same sums as `incremental.decoder` in another order,
    equal up to float rounding."""
    rows = tokens.shape[0]
    x = model.tgt_embed(tokens) * model.scale + model.positions.index_select(0, at)
    past_mask = torch.arange(self_kv[0].shape[2], device=tokens.device) >= at
    new_kv = []
    for i, layer in enumerate(model.decoder_layers):
        attn = layer.self_attn
        block = layer.self_block
        h = block.input(x)
        heads, d_head = attn.heads, attn.head_dim
        q, k, v = attn.in_proj(h).view(rows, 1, 3, heads, d_head).permute(2, 0, 3, 1, 4)
        new_kv += [k, v]
        # softmax over the past keys and the new one, without joining them
        past = attn.scores(q, self_kv[2 * i]).masked_fill(past_mask, float("-inf"))
        now = attn.scores(q, k)
        top = torch.maximum(past.amax(dim=-1, keepdim=True), now)
        past, now = (past - top).exp(), (now - top).exp()
        out = (past @ self_kv[2 * i + 1] + now * v) / (past.sum(dim=-1, keepdim=True) + now)
        out = attn.out_proj(incremental.merge_heads(out))
        x = block.add(x, out)

        attn = layer.cross_attn
        block = layer.cross_block
        h = block.input(x)
        q = attn.q_proj(h).view(rows // group, group, heads, d_head).transpose(1, 2)
        scores = attn.scores(q, cross_kv[2 * i]).masked_fill(~may_attend, float("-inf"))
        out = scores.softmax(dim=-1) @ cross_kv[2 * i + 1]  # (no branch on sizes: one graph)
        out = attn.out_proj(incremental.merge_heads(out).view(rows, 1, heads * d_head))
        x = block.add(x, out)

        x = incremental.feed_forward(layer, x)
    x = model.decoder_norm(x)[:, 0]
    lp = incremental.vocabulary_log_probs(model, x, vocab, vocab_weight, vocab_bias, _log_softmax)
    return lp, new_kv


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1)


class _Source(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor):
        return incremental.source_side(self.model, src)


class _Step(nn.Module):
    def __init__(self, model: nn.Module, group: int):
        super().__init__()
        self.model, self.group = model, group

    def forward(self, tokens, at, self_kv, cross_kv, may_attend, shortlist=(None, None, None)):
        args = (tokens, at, self_kv, cross_kv, may_attend, self.group, *shortlist)
        return decoder_step(self.model, *args)


# Inductor's settings for the libraries (see the module's docstring).
AHEAD_OF_TIME = {
    "aot_inductor.package_constants_in_so": True,
    "freezing": True,
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
}


def cache_dir() -> Path:
    root = os.environ.get("NMT_CACHE_DIR") or Path.home() / ".cache" / "nmt"
    return Path(root) / "compiled"


class _Library:
    """A library loaded from its file. Called with its inputs flattened here, each made
    contiguous (a library reads every input as contiguous; a search's last tokens are a
    strided view): the loader's own call parsed its inputs' and outputs' structure from text
    on every call, a fifth of a one-sentence beam step."""

    def __init__(self, path: Path, name: str):
        self.run = torch._inductor.aoti_load_package(str(path)).loader.boxed_run
        self.source = name == "source"

    def __call__(self, *args):
        flat = []
        for arg in args:
            for x in arg if isinstance(arg, (list, tuple)) else (arg,):
                if x is not None:
                    flat.append(x.contiguous())
        out = self.run(flat)
        # source: the layers' keys and values, then the mask; a step: log-probs, then the new
        # keys and values
        return (out[:-1], out[-1]) if self.source else (out[0], out[1:])


class CompiledDecoding:
    """`source_side` and `decoder_step` of one model, compiled at their first call (per
    `group` for the step) and run from then on; eager after any failure, and for batches
    larger than the libraries were tuned for."""

    # The CPU libraries' matrix products are chosen (max-autotune) on a few rows, so above
    # these sizes the eager functions are faster (the recipe's model, one thread, eager / compiled:
    # a step 1.29x at 80 rows, 0.92x at 320, beam 5; encoding 1.22x at 128 source tokens,
    # 0.93x at 256): they decode larger batches (docs/experiments/decoding.md).
    STEP_ROWS = 128
    SOURCE_TOKENS = 192

    def __init__(self, model: nn.Module):
        self.model = model
        self.failed = False
        self._graphs: dict[tuple[str, int], Callable] = {}
        self._weights_key: str | None = None

    def source_side(self, src: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        if src.device.type == "cpu" and src.numel() > self.SOURCE_TOKENS:
            return None
        return self._run("source", 1, (src,))

    def step(
        self, tokens: torch.Tensor, at: int, state: incremental.TransformerState
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """`decoder_step` on a search's state; a shortlist is a library of its own."""
        if tokens.device.type == "cpu" and tokens.shape[0] > self.STEP_ROWS:
            return None
        at = torch.tensor([at], device=tokens.device)
        args = (tokens, at, state.self_kv, state.cross_kv, state.may_attend)
        if state.vocab is None:
            return self._run("step", state.group, args)
        shortlist = (state.vocab, state.vocab_weight, state.vocab_bias)
        return self._run("step-shortlist", state.group, (*args, shortlist))

    def _run(self, name: str, group: int, args: tuple):
        """The library's outputs; None once anything failed (the caller decodes eagerly)."""
        if self.failed:
            return None
        try:
            graph = self._graphs.get((name, group))
            if graph is None:
                graph = self._graphs[name, group] = self._build(name, group)
            return graph(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure means: go eager
            self.failed = True
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning(f"compiling the decoding step failed, decoding eagerly ({first})")
            return None

    def _module(self, name: str, group: int) -> nn.Module:
        return _Source(self.model) if name == "source" else _Step(self.model, group)

    def _build(self, name: str, group: int) -> Callable:
        device = next(self.model.parameters()).device
        if device.type != "cpu":
            return torch.compile(self._module(name, group), dynamic=True)
        path = cache_dir() / f"{name}-{group}-{self._key(name, group)}.pt2"
        if not path.exists():
            self._compile(name, group, path)
        return _Library(path, name)

    def _compile(self, name: str, group: int, path: Path) -> None:
        log.info(
            f"compiling the decoding step ({name}{'' if name == 'source' else f', {group} a sentence'}"
            f"): 30-60 s on a small CPU, once; kept in {path.parent}"
        )
        args, shapes = self._example(name, group)
        with torch.no_grad():
            program = torch.export.export(
                self._module(name, group).eval(), args, dynamic_shapes=shapes, strict=False
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.stem}.{os.getpid()}.pt2")
        try:
            torch._inductor.aoti_compile_and_package(
                # a copy: the compiler adds its own settings to the dict it is given, which
                # changed the key of every library built after the first
                program,
                package_path=str(part),
                inductor_configs=dict(AHEAD_OF_TIME),
            )
            os.replace(part, path)  # whole or not at all, for other processes
        finally:
            part.unlink(missing_ok=True)

    def _example(self, name: str, group: int) -> tuple[tuple, tuple]:
        """Inputs to trace with, and which of their sizes vary. Sizes of 2 or more: export
        would take a size of 1 for a constant."""
        model = self.model
        Dim = torch.export.Dim
        limit = model.cfg.max_positions
        sources = Dim("sources", min=1, max=1 << 16)
        source_length = Dim("source_length", min=1, max=limit)
        src = torch.full((2, 8), 4, dtype=torch.long)
        if name == "source":
            return (src,), ({0: sources, 1: source_length},)
        with torch.no_grad():
            cross_kv, may_attend = incremental.source_side(model, src)
        rows = sources * group if group > 1 else sources
        layer = model.decoder_layers[0].self_attn
        capacity = Dim("capacity", min=1, max=limit + incremental.BLOCK)
        self_kv = [
            cross_kv[0].new_zeros(2 * group, layer.heads, incremental.BLOCK, layer.head_dim)
            for _ in cross_kv
        ]
        tokens = torch.full((2 * group, 1), 4, dtype=torch.long)
        args = (tokens, torch.tensor([3]), self_kv, cross_kv, may_attend)
        shapes = (
            {0: rows},
            None,
            [{0: rows, 2: capacity}] * len(self_kv),
            [{0: sources, 2: source_length}] * len(cross_kv),
            {0: sources, 3: source_length},
        )
        if name == "step-shortlist":
            vocab = torch.arange(min(16, model.output_projection.out_features))
            weight = model.tgt_embed.weight.index_select(0, vocab)
            bias = model.output_bias.index_select(0, vocab) if model.cfg.output_bias else None
            listed = Dim("shortlist", min=1, max=model.output_projection.out_features)
            args += ((vocab, weight, bias),)
            shapes += (({0: listed}, {0: listed}, None if bias is None else {0: listed}),)
        return args, shapes

    def _key(self, name: str, group: int) -> str:
        """What a library depends on: the weights, the code it traces, torch, the CPU."""
        if self._weights_key is None:
            digest = hashlib.sha256(repr(self.model.cfg).encode())
            for key, tensor in self.model.state_dict().items():
                digest.update(key.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
            self._weights_key = digest.hexdigest()
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        digest = hashlib.sha256(self._weights_key.encode())
        code = [
            sys.modules[__name__],
            incremental,
            attention,
            sys.modules[type(self.model).__module__],
        ]
        for part in [inspect.getsource(m) for m in code] + [
            torch.__version__,
            platform.machine(),
            str(pick_vec_isa()),
            torch.get_num_threads(),
            repr(AHEAD_OF_TIME),
            name,
            group,
        ]:
            digest.update(str(part).encode())
        return digest.hexdigest()[:20]
