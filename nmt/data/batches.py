"""Batches: sentences padded into tensors, and grouped by token count (for training) or by size
(for translation), so that a batch holds sentences of similar length."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nmt.data.dataset import ParallelDataset
from nmt.data.tokenizer import BOS, EOS, PAD
from nmt.errors import NmtError

log = logging.getLogger("nmt")


@dataclass
class Batch:
    src: torch.Tensor  # (B, S): tokens + EOS, right-padded with PAD
    tgt_in: torch.Tensor  # (B, T): BOS + tokens
    tgt_out: torch.Tensor  # (B, T): tokens + EOS
    target_positions: torch.Tensor  # flat indices of the non-padding entries of tgt_out
    n_tgt_tokens: int  # their number, known without touching the device

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory, so a copy to the GPU can overlap compute."""
        return Batch(
            self.src.pin_memory(),
            self.tgt_in.pin_memory(),
            self.tgt_out.pin_memory(),
            self.target_positions.pin_memory(),
            self.n_tgt_tokens,
        )

    def to(self, device: torch.device) -> Batch:
        nb = device.type == "cuda"
        return Batch(
            self.src.to(device, non_blocking=nb),
            self.tgt_in.to(device, non_blocking=nb),
            self.tgt_out.to(device, non_blocking=nb),
            self.target_positions.to(device, non_blocking=nb),
            self.n_tgt_tokens,
        )


def pad_sequences(
    seqs: Sequence[torch.Tensor], prefix: int | None, suffix: int | None
) -> torch.Tensor:
    extra = (prefix is not None) + (suffix is not None)
    width = max((len(s) for s in seqs), default=0) + extra
    out = torch.full((len(seqs), width), PAD, dtype=torch.long)
    for row, s in enumerate(seqs):
        start = 0
        if prefix is not None:
            out[row, 0] = prefix
            start = 1
        out[row, start : start + len(s)] = s
        if suffix is not None:
            out[row, start + len(s)] = suffix
    return out


def collate(dataset: ParallelDataset, indices: Sequence[int], multiple: int = 1) -> Batch:
    """The batch of sentences `indices`, its lengths padded up to a multiple of `multiple`."""
    tgt_out = dataset.tgt.padded(indices, None, EOS, multiple)
    positions = tgt_out.flatten().ne(PAD).nonzero().squeeze(1)
    return Batch(
        src=dataset.src.padded(indices, None, EOS, multiple),
        tgt_in=dataset.tgt.padded(indices, BOS, None, multiple),
        tgt_out=tgt_out,
        target_positions=positions,
        n_tgt_tokens=len(positions),
    )


def token_batches(
    src_lengths: torch.Tensor,
    tgt_lengths: torch.Tensor,
    max_tokens: int,
    seed: int | None = None,
    multiple: int = 1,
) -> list[list[int]]:
    """Group sentences of similar length into batches of at most `max_tokens` padded tokens.

    The cost of a batch is its size times its longest side (source with EOS, target with BOS),
    as in fairseq, that side rounded up to a multiple of `multiple` as `collate` pads it. With a
    seed, ties are broken randomly and the batch order is shuffled, so each epoch sees
    different batches; without one, the order is deterministic (for validation).
    """
    n = len(src_lengths)
    size = torch.maximum(src_lengths, tgt_lengths).to(torch.int64) + 1
    size = (size + multiple - 1) // multiple * multiple
    generator = None
    order = torch.arange(n)
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator)
    # Sort by target length, then by source length, keeping the random order within ties.
    order = order[torch.argsort(src_lengths[order], stable=True)]
    order = order[torch.argsort(tgt_lengths[order], stable=True)]
    sizes = size[order].tolist()
    largest = max(sizes, default=0)
    if largest > max_tokens:
        raise NmtError(
            f"a sentence of {largest} tokens does not fit train.max_tokens={max_tokens}; "
            "raise train.max_tokens or lower filter.max_len"
        )
    batches = batches_by_size(order.tolist(), sizes, max_tokens)
    if generator is not None:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


def batches_by_size(
    items: Sequence[int], sizes: Sequence[int], max_tokens: int, max_items: int = 0
) -> list[list[int]]:
    """Cut `items` (in the order given, usually sorted by size) into consecutive batches whose
    padded size, items × the largest size, is at most `max_tokens`, with at most `max_items`
    items each (0: no limit). An item larger than `max_tokens` makes a batch of its own."""
    most = max_items or len(items)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for item, size in zip(items, sizes):
        if current and (
            max(longest, size) * (len(current) + 1) > max_tokens or len(current) >= most
        ):
            batches.append(current)
            current, longest = [], 0
        current.append(item)
        longest = max(longest, size)
    if current:
        batches.append(current)
    return batches
