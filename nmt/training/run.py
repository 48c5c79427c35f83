"""A training run: what one run works with, built from its recipe — the prepared data, the
model (fresh, fine-tuned from train.init_from, or resumed from last.pt), the `Trainer`, the
translator that validates it, and the `TrainState` a resume continues from — with each
epoch's batches in their seeded order and the run's checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

import torch

from nmt import checkpoint, config
from nmt.checkpoint import same_tokenizers
from nmt.config import Recipe
from nmt.data.batches import Batch, collate, token_batches
from nmt.data.dataset import ParallelDataset, Prepared, SubwordSampler
from nmt.decoding.engine import TorchEngine
from nmt.decoding.translator import Translator
from nmt.errors import NmtError
from nmt.models.builder import build_model
from nmt.training.distributed import World
from nmt.training.trainer import Trainer
from nmt.utils.device import resolve_precision

log = logging.getLogger("nmt")


@dataclass
class TrainState:
    """Where a run stands: everything besides weights, optimizer and RNG that a resume needs."""

    step: int = 0
    epoch: int = 0
    epoch_updates: int = 0  # updates done in the current epoch: the position in its order
    best_bleu: float = -1.0
    last_bleu: float = -1.0
    bad_validations: int = 0  # validations in a row without a better BLEU
    nonfinite_skipped: int = 0  # updates skipped for inf/NaN gradients
    oom_skipped: int = 0  # updates skipped for running out of GPU memory
    seconds: float = 0.0  # wall time of the run so far, summed over resumes (for max_time)
    schedule_end: int | None = None  # where the decay ends when fitted to max_time
    # The train.max_time (s) that stopped the run: it stops a little before the budget, keeping
    # time for its last validation and averaging, so `seconds` alone may not reach it.
    budget_spent: float | None = None


def open_prepared(recipe: Recipe) -> Prepared:
    prepared = Prepared.open(recipe.prepared_dir)
    m = prepared.manifest
    if (m["src_lang"], m["tgt_lang"]) != (recipe.data.src_lang, recipe.data.tgt_lang):
        raise NmtError(
            f"{recipe.prepared_dir} holds {m['src_lang']}-{m['tgt_lang']} data but the recipe "
            f"asks for {recipe.data.src_lang}-{recipe.data.tgt_lang}; "
            "rerun `nmt preprocess --force`"
        )
    return prepared


def initial_model(recipe: Recipe, prepared: Prepared) -> torch.nn.Module:
    """The untrained model of a recipe, initialised from its seed."""
    torch.manual_seed(recipe.seed)
    return build_model(
        recipe.model,
        len(prepared.src_tok),
        len(prepared.tgt_tok),
        prepared.manifest["joint"] and recipe.model.share_all_embeddings,
    )


@dataclass
class Run:
    """Everything one training run works with, built from its recipe (and last.pt)."""

    recipe: Recipe
    run_dir: Path
    prepared: Prepared
    train_data: ParallelDataset
    valid_data: ParallelDataset
    valid_src: list[str]
    valid_ref: list[str]
    trainer: Trainer
    translator: Translator  # decodes the model being trained, for validation BLEU
    state: TrainState
    world: World
    resumed: bool
    sampler: SubwordSampler | None = None  # train.subword_alpha: pieces sampled every epoch

    @classmethod
    def start(cls, recipe: Recipe, device: torch.device, world: World, force: bool) -> Run:
        run_dir = Path(recipe.run_dir)
        # A run folder with a checkpoint is resumed, unless --force starts it afresh.
        last = run_dir / "last.pt"
        saved = None
        if last.exists() and not force:
            saved = checkpoint.load(last)
            checkpoint.check_resumable(saved, recipe, last)
        prepared = open_prepared(recipe)
        precision = resolve_precision(recipe.train.precision, device)
        model = initial_model(recipe, prepared)
        if saved is None and recipe.train.init_from:
            _load_pretrained(model, recipe, prepared)
        model.to(device)
        trainer = Trainer(model, recipe.train, device, precision, world)
        decode = recipe.decode
        if recipe.train.valid_search == "greedy":
            decode = dataclasses.replace(decode, method="greedy")
        engine = TorchEngine(model, device, precision, decode.sampling_seed)
        translator = Translator(engine, prepared.src_tok, prepared.tgt_tok, decode)
        state = TrainState()
        if saved is not None:
            model.load_state_dict(saved["model"])
            trainer.load_state_dict(saved)
            state = TrainState(**saved["train_state"])
            checkpoint.restore_rng(saved)
        if world.rank > 0:
            # Other ranks draw other dropout masks (rank 0 keeps the single-process stream).
            torch.manual_seed(recipe.seed * 1_000_003 + world.rank * 7919 + state.step)
        valid_src, valid_ref = prepared.raw_valid()
        train_data = prepared.dataset("train")
        sampler = None
        if recipe.train.subword_alpha > 0:
            sampler = SubwordSampler(
                train_data,
                prepared.src_tok,
                prepared.tgt_tok,
                recipe.train.subword_alpha,
                recipe.train.subword_nbest,
                recipe.filter.max_len,
            )
        return cls(
            recipe,
            run_dir,
            prepared,
            train_data,
            prepared.dataset("valid"),
            valid_src,
            valid_ref,
            trainer,
            translator,
            state,
            world,
            saved is not None,
            sampler,
        )

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model

    def epoch_updates(self, epoch: int, skip: int = 0) -> Iterator[list[Batch]]:
        """This epoch's batches (reshuffled with the seed), grouped `accum_steps` per update;
        the first `skip` updates (done before a resume) are left out."""
        seed = self.recipe.seed * 100_003 + epoch
        data = self.train_data
        if self.sampler is not None:
            data = self.sampler.epoch(seed)
            stored = int(self.train_data.tgt.lengths.sum())
            log.debug(
                f"epoch {epoch}: {int(data.tgt.lengths.sum()) / stored:.3f}x the target pieces"
            )
        multiple = self.recipe.train.pad_multiple
        batches = token_batches(
            data.src.lengths, data.tgt.lengths, self.recipe.train.max_tokens, seed, multiple
        )
        # Every rank computes the same order and takes its share of each global update; the
        # global batch of an update is `world size × accum_steps` batches.
        k = self.recipe.train.accum_steps
        n = self.world.size
        per_update = k * n
        pin = self.trainer.device.type == "cuda"

        def groups() -> Iterator[list[Batch]]:
            for i in range(skip * per_update, len(batches) - per_update + 1, per_update):
                mine = batches[i + self.world.rank * k : i + (self.world.rank + 1) * k]
                group = [collate(data, b, multiple) for b in mine]
                yield [b.pin_memory() for b in group] if pin else group

        if not pin:
            # On the CPU the producer thread would take a core from the update it is meant to
            # overlap with: measured 0.94x the target tokens/s with it (docs/experiments/training-speed.md).
            return groups()
        return _prefetched(groups(), depth=2)

    def save(self, name: str) -> None:
        checkpoint.save(
            checkpoint.training_state(
                self.model,
                self.recipe,
                self.prepared,
                self.state.step,
                dataclasses.asdict(self.state),
                self.trainer.state_dict(),
            ),
            self.run_dir / name,
        )

    def save_weights(self, name: str) -> None:
        """The weights alone: what averaging and translation need, at a fraction of the size."""
        checkpoint.save(
            checkpoint.model_state(self.model, self.recipe, self.prepared, self.state.step),
            self.run_dir / name,
        )


# Model settings that shape no weight: fine-tuning may change them.
_REGULARISATION = ("dropout", "attention_dropout", "activation_dropout")


def _load_pretrained(model: torch.nn.Module, recipe: Recipe, prepared: Prepared) -> None:
    """Fine-tuning: the weights of train.init_from, which must be the same architecture on the
    same vocabulary (its SentencePiece models are what `nmt preprocess` used)."""
    path = recipe.train.init_from
    state = checkpoint.load(path)
    theirs = config.from_dict(state["recipe"]).model
    mine = recipe.model
    for field in dataclasses.fields(mine):
        name = field.name
        if name not in _REGULARISATION and getattr(theirs, name) != getattr(mine, name):
            raise NmtError(
                f"train.init_from {path} has model.{name} = {getattr(theirs, name)!r}, the "
                f"recipe {getattr(mine, name)!r}; fine-tuning keeps the architecture: copy "
                "its model section (dropout may differ)"
            )
    prepared_models = {"src": prepared.src_tok.proto, "tgt": prepared.tgt_tok.proto}
    if not same_tokenizers(state["tokenizers"], prepared_models):
        raise NmtError(
            f"train.init_from {path} has other SentencePiece models than {prepared.path}; "
            "rerun `nmt preprocess --force` with train.init_from set, so it takes the "
            "checkpoint's"
        )
    model.load_state_dict(state["model"])
    log.info(f"fine-tuning from {path} (step {state['step']}): fresh optimizer and schedule")


def _prefetched(items: Iterator, depth: int) -> Iterator:
    """`items`, produced `depth` ahead on a background thread: the next batches are collated
    (and pinned) while the device computes the current update. Order and content are those
    of `items`; an exception in the producer is raised in the consumer."""
    queue: Queue = Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put(item)
        except BaseException as e:  # handed to the consumer, which raises it
            queue.put(_Failure(e))
        queue.put(done)

    thread = threading.Thread(target=produce, name="nmt-batches", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(Empty):
                queue.get_nowait()
            thread.join(timeout=0.01)


@dataclass
class _Failure:
    error: BaseException
