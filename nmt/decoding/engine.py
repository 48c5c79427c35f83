"""Our own search engine: an EncoderDecoder (or an Ensemble) on a torch device, searched by
nmt.decoding.search. A `Translator` hands it token ids and gets hypotheses back; the other
engine, a CTranslate2 export, is nmt.decoding.ct2.CTranslate2Engine, with the same methods.

    search(batch, nbest, decode, guide) -> hypotheses   each sentence's n best, best first
    cross_attention(src, hyps) -> weights               per hypothesis (+EOS) over src (+EOS)
    score(ids, refs, decode) -> ReferenceScore each     forced decoding of given targets
    max_source_length, max_output_length                the longest input and output allowed
"""

from __future__ import annotations

import torch

from nmt.config import DecodeConfig
from nmt.data.batches import batches_by_size, pad_sequences
from nmt.data.tokenizer import BOS, EOS
from nmt.decoding.records import ReferenceScore
from nmt.decoding.search import Guide, Hypothesis, pause, search
from nmt.decoding.shortlist import Shortlist
from nmt.models.base import EncoderDecoder
from nmt.utils.device import Precision, autocast

SCORE_TOKENS = 64


class TorchEngine:
    def __init__(
        self,
        model: EncoderDecoder,
        device: torch.device,
        precision: Precision = "fp32",
        seed: int = 1,
        shortlist: Shortlist | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.shortlist = shortlist
        # Sampling draws from its own seeded generator: the same seed, the same samples.
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def max_source_length(self) -> int:
        return self.model.max_source_length

    @property
    def max_output_length(self) -> int:
        return self.model.max_output_length

    def search(
        self,
        batch: list[list[int]],
        nbest: int,
        decode: DecodeConfig,
        guide: Guide | None = None,
    ) -> list[list[Hypothesis]]:
        src = pad_sequences([torch.tensor(s) for s in batch], None, EOS)
        vocab = None
        if self.shortlist is not None:
            vocab = self.shortlist.allowed(src, _guide_tokens(guide))
        with autocast(self.device, self.precision):
            return search(
                self.model,
                src.to(self.device),
                decode,
                nbest=nbest,
                generator=self.generator,
                guide=guide,
                vocab=vocab,
            )

    @torch.inference_mode()
    def cross_attention(self, src: list[int], hyps: list[list[int]]) -> list[torch.Tensor]:
        """The cross-attention over `src` (+EOS) for each hypothesis (+EOS) (for a Transformer:
        its last decoder layer's, averaged over heads), from one teacher-forced pass: the
        decoder is causal, so these are the weights the search saw when it chose each token."""
        n = len(hyps)
        src_t = pad_sequences([torch.tensor(src)] * n, None, EOS).to(self.device)
        tgt_in = pad_sequences([torch.tensor(h) for h in hyps], BOS, None).to(self.device)
        with autocast(self.device, self.precision):
            weights = self.model.cross_attention(src_t, tgt_in).float()  # (n, T, S)
        return [weights[i, : len(h) + 1].cpu() for i, h in enumerate(hyps)]

    @torch.inference_mode()
    def score(
        self, ids: list[list[int]], refs: list[list[int]], decode: DecodeConfig
    ) -> list[ReferenceScore]:
        """The log-probability of each target (without BOS/EOS; EOS is scored) given its
        source (without EOS), from one teacher-forced pass: what the search's steps give for
        that output, up to float rounding."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        sizes = [max(len(ids[i]), len(refs[i])) + 1 for i in order]
        results: list[ReferenceScore | None] = [None] * len(ids)
        # A batch's pass holds (sentences x target length x vocabulary) floats: at most
        # SCORE_TOKENS target positions a batch keep that near 2 MiB for an 8k vocabulary, so
        # re-scoring a translation's odd outputs raises no peak that decoding has not (greedy,
        # batch 64, Multi30k: 339 MiB at 256 positions, 319 at 64, 316 without re-scoring).
        tokens = min(decode.batch_tokens, SCORE_TOKENS)
        for batch in batches_by_size(order, sizes, tokens, decode.batch_size):
            pause()  # a point where a server may decode other requests (search.between_steps)
            src = pad_sequences([torch.tensor(ids[i]) for i in batch], None, EOS)
            targets = [refs[i] + [EOS] for i in batch]
            tgt = pad_sequences([torch.tensor(t) for t in targets], BOS, None)
            with autocast(self.device, self.precision):
                # (B, T, V): the next token after each position, in one teacher-forced pass
                log_probs = (
                    self.model.log_probs(src.to(self.device), tgt[:, :-1].to(self.device))
                    .float()
                    .cpu()
                )
            for row, i in enumerate(batch):
                target = torch.tensor(targets[row])
                token_lp = log_probs[row, : len(target)].gather(1, target[:, None])[:, 0]
                total = float(token_lp.double().sum())
                results[i] = ReferenceScore(total, total / len(target), len(target))
        return results  # type: ignore[return-value]


def _guide_tokens(guide: Guide | None) -> list[int]:
    """The target ids a guide forces (its prefixes' and constraints'): a shortlist keeps them."""
    if guide is None:
        return []
    tokens = [t for prefix in guide.prefixes for t in prefix]
    tokens += [t for phrases in guide.constraints for phrase in phrases for t in phrase]
    return tokens
