"""One optimizer update: forward and backward over the update's batches (gradients accumulated
and, under torchrun, synchronised once), loss scaling for fp16, clipping, the Adam step, and
the updates skipped for non-finite gradients or a batch too big for GPU memory.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from nmt.config import TrainConfig
from nmt.data.batches import Batch
from nmt.training import distributed
from nmt.training.distributed import World
from nmt.training.loss import batch_loss
from nmt.utils.device import Precision, autocast

log = logging.getLogger("nmt")


class _LossModule(torch.nn.Module):
    """`batch_loss` as a module, so DistributedDataParallel can wrap it (DDP synchronises the
    gradients of what runs through its own forward)."""

    def __init__(
        self, model: torch.nn.Module, label_smoothing: float, every_position: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.every_position = every_position

    def forward(self, src, tgt_in, tgt_out, target_positions=None) -> torch.Tensor:  # noqa: ANN001
        batch = Batch(src, tgt_in, tgt_out, target_positions, 0)
        return batch_loss(self.model, batch, self.label_smoothing, self.every_position)


@dataclass
class Update:
    loss: torch.Tensor  # summed over the update's target tokens (stays on the device)
    tokens: int  # target tokens of the global batch
    skipped: str | None = None  # "nonfinite" or "oom" when known to be skipped on the host
    # 1.0 where the gradients were not finite and Adam skipped the step itself, else 0.0: a
    # device tensor, read with the loss once per log window instead of once per update.
    nonfinite: torch.Tensor | None = None
    grad_norm: torch.Tensor | None = None  # before clipping (0 where not finite); on the device
    # Some rank was interrupted (a signal) / found the time budget spent; without torchrun,
    # the flags passed in.
    interrupted: bool = False
    time_up: bool = False


class Trainer:
    """Optimizes a model one update at a time: forward and backward over the update's batches
    (gradients accumulated, synchronised once under DDP), clipping, the optimizer step."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        device: torch.device,
        precision: Precision = "fp32",
        world: World | None = None,
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.precision, self.world = precision, world or World()
        # CUDA graphs replay a recorded shape: one GPU, one process (DDP's collectives would
        # have to be captured too).
        self.cuda_graphs = cfg.cuda_graphs and device.type == "cuda" and not self.world.active
        if cfg.cuda_graphs and not self.cuda_graphs:
            log.warning(
                "train.cuda_graphs: CUDA graphs need a single GPU (not a CPU, not torchrun); "
                "the step is compiled without them"
            )
        self.loss_module: torch.nn.Module = _LossModule(
            model, cfg.label_smoothing, every_position=self.cuda_graphs
        )
        if self.world.active:
            self.loss_module = torch.nn.parallel.DistributedDataParallel(
                self.loss_module,
                device_ids=[self.world.local_rank] if device.type == "cuda" else None,
            )
        self.eager_loss_module = self.loss_module
        if cfg.compile:
            # Batch shapes vary with sentence lengths: compile for dynamic shapes once rather
            # than recompiling for each new shape. "reduce-overhead" records each new shape's
            # forward and backward as CUDA graphs, replayed when the shape comes again.
            mode = "reduce-overhead" if self.cuda_graphs else None
            self.loss_module = torch.compile(self.loss_module, dynamic=True, mode=mode)
            # Source and target lengths are separate sizes even when a batch has them equal:
            # "duck shaping" would tie them in the first graph and compile a second for the
            # first batch where they differ (a minute each on a CPU).
            torch.fx.experimental._config.use_duck_shape = False
        self.optimizer = torch.optim.Adam(
            model.parameters(),
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            # One kernel for the whole update instead of several per parameter (on the CPU
            # too: 2.7 against 11.7 ms a step for the Multi30k recipe's model), and it can skip
            # a step on a device-side flag, without waiting for the device (`found_inf`).
            fused=True,
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def update(
        self, group: list[Batch], lr: float, interrupted: bool = False, time_up: bool = False
    ) -> Update:
        """One optimizer step over `accum_steps` batches; the loss is per target token of all.

        `interrupted` and `time_up` are this rank's reasons to stop after this update; under
        torchrun they travel in the collective that sums the token count, so every rank learns
        them at the same update.
        """
        self.model.train()
        n_tokens = sum(b.n_tgt_tokens for b in group)
        if self.world.active:
            total_tokens, interrupts, times_up = distributed.all_sum(
                [float(n_tokens), float(interrupted), float(time_up)], self.world, self.device
            )
            n_tokens, interrupted, time_up = int(total_tokens), interrupts > 0, times_up > 0
        # DDP averages gradients over ranks; scaling by the world size makes that a sum.
        scale = self.world.size / n_tokens
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        total = torch.zeros((), device=self.device)
        if self.cuda_graphs:
            # What the graphs returned in the last update (gradients since consumed by the
            # optimizer and dropped) may be overwritten from here on. Within an update the
            # gradients of a batch stay alive while the next accumulates onto them, so the
            # graphs keep them.
            torch.compiler.cudagraph_mark_step_begin()
        try:
            for i, batch in enumerate(group):
                batch = batch.to(self.device)
                # Synchronise gradients once per update, on its last batch.
                sync = contextlib.nullcontext()
                if self.world.active and i < len(group) - 1:
                    sync = self.loss_module.no_sync()
                with sync:
                    loss = self._forward_backward(batch, scale)
                total += loss.detach()
        except torch.cuda.OutOfMemoryError:
            if self.world.active:
                raise  # the other ranks are waiting in a collective: skipping would hang them
            # A rare long batch ran out of GPU memory: drop it and go on.
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            sizes = "+".join(
                f"{b.src.shape[0]}x{max(b.src.shape[1], b.tgt_in.shape[1])}" for b in group
            )
            log.warning(
                f"out of memory on a batch of {sizes} tokens; update skipped. "
                "Lower train.max_tokens if this recurs."
            )
            zero = torch.zeros((), device=self.device)
            return Update(zero, 0, "oom", interrupted=interrupted, time_up=time_up)
        self.scaler.unscale_(self.optimizer)  # a no-op without fp16 loss scaling
        clip = self.cfg.clip_norm if self.cfg.clip_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if self.scaler.is_enabled():
            # fp16: the scaler skips the step itself when it found inf/NaN, and lowers its scale.
            scale_before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale_before
        else:
            # No host synchronisation: the fused step itself leaves the weights, Adam's moments
            # and its step count untouched where found_inf is set; the loop reads the flag
            # with the loss, once per log window.
            finite = torch.isfinite(norm)
            nonfinite = (~finite).to(torch.float32)
            self.optimizer.grad_scale, self.optimizer.found_inf = None, nonfinite
            self.optimizer.step()
            self.optimizer.found_inf = None
            self.optimizer.zero_grad(set_to_none=True)
            grad_norm = torch.where(finite, norm.detach(), 0.0)
            return Update(
                total, n_tokens, None, nonfinite=nonfinite, grad_norm=grad_norm,
                interrupted=interrupted, time_up=time_up,
            )  # fmt: skip
        if skipped:
            log.warning("gradients are not finite; update skipped")
        self.optimizer.zero_grad(set_to_none=True)
        skip = "nonfinite" if skipped else None
        return Update(total, n_tokens, skip, interrupted=interrupted, time_up=time_up)

    def _forward_backward(self, batch: Batch, scale: float) -> torch.Tensor:
        """One batch's loss, its gradients accumulated. A compiled step that fails (no C++
        compiler, an operation the compiler does not take) falls back to eager with one
        warning, and the batch is done again eagerly."""
        for attempt in (1, 2):
            try:
                # With CUDA graphs every position is projected (see batch_loss).
                positions = None if self.cuda_graphs else batch.target_positions
                with autocast(self.device, self.precision):
                    loss = self.loss_module(batch.src, batch.tgt_in, batch.tgt_out, positions)
                self.scaler.scale(loss * scale).backward()
                return loss
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:
                if self.loss_module is self.eager_loss_module or attempt == 2:
                    raise
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                log.warning(
                    f"train.compile: compiling the training step failed ({type(e).__name__}: "
                    f"{first}); training eagerly"
                )
                self.loss_module = self.eager_loss_module
        raise AssertionError("unreachable")

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
