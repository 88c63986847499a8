"""Data-parallel training on PyTorch's own engine (``torchrun`` + DDP; NCCL on GPU, gloo on CPU).

The semantics are those of one process on the global batch. Every rank takes its shard of the
same global batch (batch order is a pure function of seed and epoch, so no sampler has to be
seeded), embeds it, and all-gathers the embeddings so the loss sees every in-batch negative
and PICO's statistics, bank and p are computed on the gathered batch: all ranks hold the same
p, and :func:`assert_in_sync` checks it (with the weights) bit for bit.

The gradient arithmetic: each rank evaluates the *same* global loss L, but gradient flows only
through its own shard (the other shards are gathered without autograd). Rank r's head gradient
is therefore exactly its shard's share of dL/dθ, and the shares must be *summed*, not averaged
as DDP does by default — :func:`sum_gradients_hook` is registered as DDP's communication hook.
Parameters of the loss itself (the InfoNCE temperature) see the whole gathered batch on every
rank, so their gradients are already identical and equal to the one-process gradient.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


def report_to_launcher(message: str) -> None:
    """Give ``torchrun`` this rank's one-line error for its failure summary.

    torchrun names each worker's ``$TORCHELASTIC_ERROR_FILE``; a message written there in
    its documented form replaces the summary's "To enable traceback see: ..." line, so the
    summary says what went wrong. Outside torchrun this does nothing."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import json
    import time

    info = {"message": message, "extraInfo": {"timestamp": str(int(time.time()))}}
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"message": info}, f)
    except OSError:  # the summary then says less; the error itself is already printed
        pass


class PeerFailed(RuntimeError):
    """Rank 0 failed in a step every rank waits on. Rank 0 reports its own error; the
    command line stops the other ranks without a second report (a traceback per rank
    buried rank 0's one-line error)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. ``world_size == 1`` is plain one-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # a gloo group with a long timeout, for waits on rank 0's one-off work (encoding a large
    # dataset on a cold cache outlasts the main group's 30 minutes, and NCCL's watchdog then
    # aborts the waiting ranks)
    wait_group: Any = field(default=None, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main rank writes checkpoints, metrics and progress."""
        return self.rank == 0

    def shard(self, idx: Tensor) -> Tensor:
        """This rank's contiguous part of a global batch of indices (sizes differ by ≤ 1)."""
        return torch.tensor_split(idx, self.world_size)[self.rank] if self.enabled else idx

    def shard_sizes(self, n: int) -> list[int]:
        return [len(s) for s in torch.tensor_split(torch.arange(n), self.world_size)]

    def gather(self, x: Tensor, sizes: list[int], *, keep_grad: bool = False) -> Tensor:
        """Concatenate every rank's ``x`` along dim 0 (rank order = global batch order).

        Shards may differ in length (``sizes``) and, for token tensors, in width (dim 1, e.g.
        captions tokenised per shard): both are padded for the collective and cut back after.
        With ``keep_grad`` this rank's own rows are the local tensor itself, so the gradient
        flows to them (see the module docstring).
        """
        if not self.enabled:
            return x
        width = x.shape[1] if x.dim() > 1 else 0
        if x.dim() > 1:
            w = torch.tensor([width], device=x.device)
            dist.all_reduce(w, op=dist.ReduceOp.MAX)
            width = int(w)
        padded = _pad_to(x.detach(), max(sizes), width)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        rows = [part[:n] for part, n in zip(parts, sizes, strict=True)]
        if keep_grad:
            rows[self.rank] = _pad_to(x, sizes[self.rank], width)
        return torch.cat(rows)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then on the others (e.g. encode once, then read the cache).

        If rank 0 fails, every rank raises instead of waiting for it at a barrier.
        """
        if not self.enabled:
            return fn()
        result: T | None = None
        error: Exception | None = None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:  # re-raised below, after telling the other ranks
                error = e
        flag = [error is None]
        dist.broadcast_object_list(flag, src=0, group=self.wait_group)
        if error is not None:
            raise error
        if not flag[0]:
            raise PeerFailed("rank 0 failed (see its error); this rank stops too")
        return result if self.is_main else fn()  # type: ignore[return-value]


def _pad_to(x: Tensor, rows: int, width: int) -> Tensor:
    """Zero-pad ``x`` to ``rows`` along dim 0 and (if it has one) ``width`` along dim 1."""
    if x.dim() > 1 and x.shape[1] < width:
        pad = x.new_zeros(x.shape[0], width - x.shape[1], *x.shape[2:])  # x's device: NCCL
        x = torch.cat([x, pad], dim=1)
    if x.shape[0] < rows:
        x = torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])], dim=0)
    return x


def init_distributed(device: torch.device) -> DistContext:
    """Join the ``torchrun`` job described by the environment, or return a one-process context.

    NCCL is used for CUDA devices, gloo otherwise. Calling it again in an initialised process
    returns the existing context.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    global _WAIT_GROUP
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        _WAIT_GROUP = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        wait_group=_WAIT_GROUP,
    )


# how long ranks wait for rank 0's one-off work (main_first), and the group they wait in
WAIT_TIMEOUT = datetime.timedelta(hours=24)
_WAIT_GROUP: Any = None


def local_device(device: torch.device, ctx: DistContext) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun. A named GPU
    (``cuda:0``) under torchrun is refused: every rank would take it, and NCCL's "Duplicate
    GPU detected" would be the only word of why."""
    if ctx.enabled and device.type == "cuda" and device.index is not None:
        raise ValueError(
            f"--device {device} under torchrun puts every rank on one GPU: give --device cuda "
            "(each rank takes cuda:LOCAL_RANK; CUDA_VISIBLE_DEVICES picks the GPUs)"
        )
    if ctx.enabled and device.type == "cuda" and device.index is None:
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


def sum_gradients_hook(process_group, bucket):
    """DDP communication hook: all-reduce SUM (DDP's default divides by the world size).

    Unannotated on purpose: DDP checks that ``bucket`` is annotated with the ``GradBucket``
    class itself, which a postponed (string) annotation is not.
    """
    fut = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def wrap_ddp(
    model: nn.Module, device: torch.device, ctx: DistContext, *, find_unused: bool = False
) -> nn.Module:
    """DDP around ``model`` with summed gradients; ``model`` itself when not distributed.

    ``find_unused``: let parameters go without a gradient in a step (a fine-tuned backbone's
    pooler, which the token-level score never uses); it costs a graph traversal per step.

    Buffers are not re-broadcast at each forward: PICO's buffers are updated identically on
    every rank from the gathered batch, and a broadcast would hide a divergence that
    :func:`assert_in_sync` should catch.
    """
    if not ctx.enabled:
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # torch renamed the switch (broadcast_buffers, deprecated, became forward_sync_buffers);
    # pyproject allows torch >= 2.1, which knows only the old name
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    ddp = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused,
        **{no_sync: False},
    )
    ddp.register_comm_hook(None, sum_gradients_hook)
    return ddp


def state_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer by sorted name (bit-exact comparison): what ranks
    compare to prove they are in sync, and what the quality study's rows fingerprint a trained
    model by (its first 16 hex digits), so that a re-run can be checked bit for bit."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def assert_in_sync(ctx: DistContext, *modules: nn.Module) -> None:
    """Raise on any rank whose weights or PICO state (p, bank, ω) differ from rank 0's."""
    if not ctx.enabled:
        return
    digests = [state_digest(m) for m in modules]
    everyone: list[list[str] | None] = [None] * ctx.world_size
    dist.all_gather_object(everyone, digests)
    if any(d != everyone[0] for d in everyone):
        bad = [r for r, d in enumerate(everyone) if d != everyone[0]]
        raise RuntimeError(
            f"distributed training diverged: the weights or PICO state of rank(s) {bad} differ "
            "from rank 0 (different data, library versions or a non-deterministic kernel?)"
        )


def shutdown(ctx: DistContext) -> None:
    """Leave the job. Drop every DDP wrapper first: one that outlives this call keeps the
    process group alive until the interpreter's own teardown, and gloo's worker threads then
    release Python objects with the interpreter half gone, which can abort the process
    (SIGABRT, "terminate called without an active exception") after a run that succeeded."""
    global _WAIT_GROUP
    if ctx.enabled and dist.is_initialized():
        gc.collect()  # wrappers in reference cycles go now, not at interpreter exit
        dist.destroy_process_group()  # every group, the wait group with it
        _WAIT_GROUP = None


def rank_step_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """The seed of rank ``rank``'s random stream for one training step: a pure function of
    the run's seed and the step's place, so a resumed run draws what it would have drawn."""
    digest = hashlib.sha256(f"picoalign:{seed}:{rank}:{epoch}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def reseed_rank_stream(ctx: DistContext, seed: int, epoch: int, step: int) -> None:
    """Give every rank but 0 its own random draws (dropout) for this step.

    Every rank seeds torch with the run's seed, so that the model starts alike everywhere,
    and a resume restores rank 0's saved RNG state on every rank: without this, each rank
    drew the same dropout masks for its own shard, so token i of every shard was dropped
    together and the global batch saw world_size copies of one mask. Rank 0 keeps the run's
    stream, so one process and rank 0 draw as before. Nothing PICO keeps in sync draws from
    this stream (batch order has its own generator; ranks are checked by
    :func:`assert_in_sync`)."""
    if ctx.enabled and ctx.rank > 0:
        torch.manual_seed(rank_step_seed(seed, ctx.rank, epoch, step))


def mean_over_ranks(loss: Tensor, ctx: DistContext) -> Tensor:
    """Scale a rank-local loss so the summed gradients average the ranks; the returned value
    (for logging and the NaN check) is the mean of every rank's loss."""
    if not ctx.enabled:
        return loss
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    mean /= ctx.world_size
    return loss / ctx.world_size + (mean - loss.detach() / ctx.world_size)


def sync_rank_local_state(model: Any, loss_fn: torch.nn.Module, ctx: DistContext) -> None:
    """With rank-local losses, what the loss side computed differs per rank: the gradients of
    the loss's own parameters (InfoNCE temperature; outside DDP) are summed, and reading B's
    matched-pair scale (an EMA updated while scoring) is averaged — the EMA of the mean."""
    if not ctx.enabled:
        return
    for p in loss_fn.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
    if model.config.method == "pico":
        scale = model.pico.pair_scale
        dist.all_reduce(scale)
        scale /= ctx.world_size
