"""Data parallelism under torchrun: every use of ``torch.distributed`` in hrm-fast is here.

``setup`` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``). Without it,
or with one process, it returns ``None`` and nothing in this module runs: a single process
never initialises a process group nor calls a collective.

With N ranks, each runs ``batch_size / N`` examples of the global batch and draws them from its
own generator, seeded by (seed, rank). In the training step (static shapes, no host sync, so
``--compile`` and ``--cuda-graphs`` keep working; NCCL collectives are capturable):

* gradients: every parameter's ``.grad`` is a view into one flat fp32 buffer, and one
  all-reduce of that buffer averages them. One collective per step with a fixed shape is the
  simplest thing to capture in a CUDA graph. DDP would bucket and overlap the all-reduce with
  the backward, but HRM's backward is only the last L and H module updates (a quarter of the
  step's FLOPs) and the network is small (6M parameters at the seed preset), so there is little
  to overlap; DDP would also broadcast the module's buffers (the puzzle-embedding table) unless
  told not to, and its reducer rebuilds buckets in the first iterations.
* puzzle embeddings: every rank's touched rows (ids and gradients) are gathered with
  ``all_gather_into_tensor`` (as HRM's ``CastedSparseEmbeddingSignSGD_Distributed``), so every
  rank applies the same sign-SGD update to its full copy of the table.
* the loss's batch statistics (diversity and distribution penalties, ``unique_classes``):
  every rank's per-example histograms are gathered, differentiably, so they are the global
  batch's, as in one process.

Outside the step: metric sums are averaged over ranks at log intervals, ranks agree on a stop
request (SIGINT/SIGTERM on any rank), the probe's verdict is broadcast from rank 0, and each
rank's ACT carry and RNG state are gathered to rank 0 for its checkpoint.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from hrm_fast.errors import UserError

# torch >= 2.13 names it all_gather_single (all_gather_into_tensor is deprecated there).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(
            f"WORLD_SIZE: expected an integer, got {os.environ['WORLD_SIZE']!r}"
        ) from None


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The sampling seed of one rank: a hash of (seed, rank, step), independent streams."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


def is_comm_error(e: BaseException) -> bool:
    """A failed collective (a rank died, or the process-group timeout passed)."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection closed", "Timed out", "Connection reset")
    )


def setup(device: str, backend: str = "auto", timeout_s: float = 600.0) -> DataParallel | None:
    """Join torchrun's process group; None for a single process (nothing distributed runs).

    ``device``: the run's ``--device`` (auto, cpu, cuda); CUDA ranks use ``cuda:LOCAL_RANK``.
    ``backend``: auto (NCCL on CUDA, gloo on CPU), gloo or nccl. ``timeout_s`` bounds every
    collective, so the other ranks fail instead of hanging when one dies.
    """
    from hrm_fast.device import resolve_device

    world = world_size_from_env()
    if world <= 1:
        return None
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "mps":  # gloo moves CPU tensors only, and NCCL is CUDA/ROCm
        raise UserError("--device mps: data-parallel training (torchrun) needs CUDA or ROCm GPUs")
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank}: this node has {torch.cuda.device_count()} GPU(s); "
                "start at most that many processes per node (--nproc-per-node)"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise UserError(f"--dist-backend: expected auto, gloo or nccl, got {backend!r}")
    if backend == "nccl" and dev.type != "cuda":
        raise UserError("--dist-backend nccl: NCCL needs CUDA devices (use gloo on CPU)")
    if timeout_s <= 0:
        raise UserError(f"--dist-timeout: expected seconds > 0, got {timeout_s}")
    kwargs = {"device_id": dev} if backend == "nccl" else {}
    dist.init_process_group(
        backend, timeout=datetime.timedelta(seconds=timeout_s), rank=rank, world_size=world,
        **kwargs,
    )  # fmt: skip
    # gloo moves CPU tensors; NCCL moves tensors on the rank's GPU.
    comm = dev if backend == "nccl" else torch.device("cpu")
    return DataParallel(rank, world, local_rank, backend, dev, comm)


@dataclass
class DataParallel:
    rank: int
    world: int
    local_rank: int
    backend: str
    device: torch.device  # where this rank computes
    comm_device: torch.device  # where the backend's collectives take their tensors
    _flat_grad: torch.Tensor | None = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch(self, global_batch: int) -> int:
        if global_batch % self.world:
            raise UserError(
                f"--batch-size: {global_batch} does not divide over {self.world} ranks "
                "(the batch size is global; every rank runs batch-size / ranks examples)"
            )
        return global_batch // self.world

    def close(self, wait_for_all: bool = True) -> None:
        """Leave the process group. ``wait_for_all``: after a barrier, so no rank (rank 0 may
        host the rendezvous store) exits while another still talks to it."""
        if not dist.is_initialized():
            return
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()

    # ------------------------------------------------------------------ inside the step

    def share_gradient_buffer(self, params: list[torch.Tensor]) -> torch.Tensor:
        """Make every ``p.grad`` a view into one flat buffer, so one all-reduce covers them.

        Autograd accumulates into an existing ``.grad`` in place and the optimiser zeroes it in
        place (``zero_grad(set_to_none=False)``), so the views hold for the whole run.
        """
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"one flat gradient buffer needs one dtype, got {dtypes}")
        flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype,
                           device=params[0].device)  # fmt: skip
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self._flat_grad = flat
        return flat

    @property
    def gradient_bytes(self) -> int:
        """Bytes of the gradient all-reduce per step (its buffer's size)."""
        g = self._flat_grad
        return 0 if g is None else g.numel() * g.element_size()

    def average_gradients(self) -> None:
        """Gradients of the mean loss over the global batch: one all-reduce of the buffer."""
        flat = self._flat_grad
        flat.div_(self.world)  # no ReduceOp.AVG on gloo
        if self.comm_device == flat.device:
            dist.all_reduce(flat)
        else:  # gloo with CUDA tensors (a --dist-backend override): stage through the host
            host = flat.cpu()
            dist.all_reduce(host)
            flat.copy_(host)

    def gather_rows(self, ids: torch.Tensor, grad: torch.Tensor):
        """Every rank's puzzle ids ``[b]`` and row gradients ``[b, D]``, in rank order.

        Static shapes (``[world * b]``, ``[world * b, D]``). The gradients are divided by the
        world size: each rank's loss is a mean over b examples, the global batch's over world*b.
        """
        all_ids = self._all_gather(ids)
        all_grad = self._all_gather(grad / self.world)
        return all_ids, all_grad

    def gather_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of a per-example tensor ``[b, ...]`` -> ``[world * b, ...]``,
        differentiable: the loss's batch-level penalties see the global batch."""
        if x.requires_grad:
            return _GatherBatch.apply(x, self)
        return self._all_gather(x)

    def _all_gather(self, x: torch.Tensor) -> torch.Tensor:
        src = x.contiguous() if self.comm_device == x.device else x.to(self.comm_device)
        out = torch.empty((self.world * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype,
                          device=src.device)  # fmt: skip
        _all_gather_single(out, src)
        return out.to(x.device)

    # ------------------------------------------------------------------ outside the step

    def average_metrics(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each 0-dim metric sum averaged over ranks (one all-reduce)."""
        stacked = torch.stack([v.float() for v in sums.values()]).to(self.comm_device)
        dist.all_reduce(stacked)
        stacked /= self.world
        return dict(zip(sums, stacked.unbind(), strict=True))

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank."""
        t = torch.tensor([int(flag)], device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's flag, on every rank."""
        t = torch.tensor([int(flag)], device=self.comm_device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def gather_tensors(self, tensors: dict[str, torch.Tensor]) -> list[dict] | None:
        """Every rank's tensors (same names, shapes and dtypes on every rank), on rank 0 as CPU
        tensors in rank order; None on the other ranks. Moved as raw bytes: bit-exact."""
        out: list[dict] | None = [{} for _ in range(self.world)] if self.is_main else None
        for name, t in tensors.items():
            raw = t.detach().contiguous().reshape(-1).view(torch.uint8).to(self.comm_device)
            parts = [torch.empty_like(raw) for _ in range(self.world)] if self.is_main else None
            dist.gather(raw, parts, dst=0)
            if out is not None:
                for r, p in enumerate(parts):
                    out[r][name] = p.cpu().view(t.dtype).view(t.shape)
        return out

    def broadcast_object(self, obj):
        """Rank 0's small picklable object, on every rank."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list | None:
        """Small picklable objects from every rank, on rank 0 in rank order (None elsewhere)."""
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


class _GatherBatch(torch.autograd.Function):
    """All-gather whose backward hands each rank the gradient of its own rows, summed over
    ranks. Every rank computes the same penalty P from the gathered rows, so rank r gets
    world * dP/d(its rows); the gradient average then divides by world: exactly dP/dθ."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dp: DataParallel) -> torch.Tensor:
        ctx.dp, ctx.rows = dp, x.shape[0]
        return dp._all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dp = ctx.dp
        total = grad.contiguous().to(dp.comm_device)
        dist.all_reduce(total)
        mine = total[dp.rank * ctx.rows : (dp.rank + 1) * ctx.rows]
        return mine.to(grad.device), None


# --------------------------------------------------------------------------- evaluation


def shard_batches(n_items: int, batch_size: int, rank: int, world: int) -> list[int]:
    """The item indices of one rank: batches ``rank, rank + world, ...`` of the single-process
    batching, so every batch (and its padding) is the one a single process would run."""
    n_batches = -(n_items // -batch_size)
    return [
        i
        for b in range(rank, n_batches, world)
        for i in range(b * batch_size, min(n_items, (b + 1) * batch_size))
    ]
