"""The processes that share one reconstruction: one alone, or the ranks ``torchrun`` starts.

Under ``torchrun --nproc-per-node K`` every rank runs the same code on its
own share of the particles: particle ``i`` belongs to rank ``i % K``, so each
rank reads only its own images and the shares stay balanced whatever the
order.  Whatever all ranks must agree on goes through :class:`Ranks`:

- sums over particles (back-projections, the stochastic first map's running
  sums, the amortized phase's gradients) are all-reduced;
- per-particle poses are updated by their owner and gathered where the whole
  set is needed (checkpoints, coverage, the final map);
- decisions (out of time, the next phase) use the values of rank 0, so every
  rank takes the same branch and meets the others in the same collective.

A lone process gets :meth:`Ranks.single`, whose collectives do nothing, so
the code paths are the same with one rank or many.  Communication is
torch.distributed's: gloo for tensors on the CPU, NCCL for tensors on GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

#: Environment variables ``torchrun`` sets for every rank.
WORLD_SIZE, RANK, LOCAL_RANK = "WORLD_SIZE", "RANK", "LOCAL_RANK"


def launched_ranks() -> int:
    """How many ranks the launcher started (1 outside ``torchrun``)."""
    try:
        return max(1, int(os.environ.get(WORLD_SIZE, "1")))
    except ValueError:
        return 1


def is_quiet_rank() -> bool:
    """Whether this process is a rank other than 0 of a ``torchrun`` job: rank 0 alone reports."""
    return launched_ranks() > 1 and os.environ.get(RANK, "0") != "0"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes sharing a reconstruction.

    Attributes
    ----------
    rank : int
        This process's rank, 0 to ``size - 1``.
    size : int
        How many processes share the particles.
    """

    rank: int = 0
    size: int = 1

    @classmethod
    def single(cls) -> Ranks:
        """One process doing everything: every collective is a no-op."""
        return cls(0, 1)

    @property
    def root(self) -> bool:
        """Whether this is rank 0, the one that reports and writes the run folder."""
        return self.rank == 0

    @property
    def shared(self) -> bool:
        """Whether more than one process shares the particles."""
        return self.size > 1

    # -- the particles' shares
    def own(self, rows: np.ndarray) -> np.ndarray:
        """The particles of ``rows`` (global indices) that this rank handles, in their order."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows if self.size == 1 else rows[rows % self.size == self.rank]

    def owned(self, n: int) -> np.ndarray:
        """Whether each of ``n`` particles is this rank's, as a boolean mask."""
        return np.arange(n) % self.size == self.rank

    def steps(self, n: int, batch_size: int) -> int:
        """Batches per epoch that every rank takes (the largest share decides, so the ranks stay in step)."""
        largest = -(-n // self.size)
        return max(1, -(-largest // max(1, batch_size)))

    # -- collectives (no-ops for one process)
    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it."""
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_rows(self, values: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Per-particle values (first axis: every particle) with each row taken from the rank that owns it."""
        if self.size == 1:
            return values
        as_numpy = isinstance(values, np.ndarray)
        tensor = torch.as_tensor(values).clone()
        tensor[torch.as_tensor(~self.owned(len(tensor)))] = 0
        self.sum_(tensor)
        return tensor.numpy() if as_numpy else tensor

    def agree(self, *values: float) -> tuple[float, ...]:
        """Rank 0's ``values``, on every rank (for decisions every rank must take the same way)."""
        if self.size == 1:
            return tuple(float(v) for v in values)
        mine = torch.tensor([float(v) if self.root else 0.0 for v in values], dtype=torch.float64)
        return tuple(float(v) for v in self.sum_(mine))

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        if self.size == 1:
            return bool(flag)
        return bool(self.sum_(torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)).item() > 0)

    def mean(self, total: float, count: float) -> float:
        """The mean over the ranks of values whose local sum is ``total`` over ``count`` items."""
        both = self.sum_(torch.tensor([total, count], dtype=torch.float64))
        return float(both[0] / both[1]) if both[1] > 0 else float("nan")

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter], count: int) -> None:
        """Make every parameter's gradient the mean over all ranks' images.

        Each rank's gradient is of the mean loss over its ``count`` images; the
        result is that of the mean over all images, as one process would have
        computed from the whole batch.  One all-reduce carries every gradient.
        """
        if self.size == 1:
            return
        params = list(parameters)
        for p in params:
            if p.grad is None:  # a rank with no image this step still takes part
                p.grad = torch.zeros_like(p)
        device = params[0].grad.device
        flat = torch.cat([p.grad.reshape(-1) * float(count) for p in params] + [torch.tensor([float(count)], device=device)])
        self.sum_(flat)
        total = float(flat[-1])
        start = 0
        for p in params:
            size = p.numel()
            p.grad.copy_((flat[start : start + size] / max(total, 1.0)).view_as(p))
            start += size

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) on every rank: each rank's only saw its own images."""
        if self.size == 1:
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.broadcast(buffer, src=0)

    def raise_together(self, problem: BaseException | None) -> None:
        """After checks every rank made: if any rank found a problem, every rank stops.

        Rank 0 reports its own problem; another rank reports its problem only
        when rank 0 found none (a file one node cannot read), so the user
        sees each problem once.  The ranks that stay silent exit with status 2.
        """
        if self.size == 1:
            if problem is not None:
                raise problem
            return
        root_failed, any_failed = self.sum_(torch.tensor([float(problem is not None and self.root), float(problem is not None)],
                                                         dtype=torch.float64)).tolist()
        if any_failed:
            stop_ranks(self)  # every rank stops here: leave together
            if problem is not None and (self.root or not root_failed):
                raise problem
            raise SystemExit(2)


def start_ranks(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the ranks ``torchrun`` started (a lone process gets :meth:`Ranks.single`); returns them and this rank's device.

    Tensors on the CPU go through gloo, tensors on GPUs through NCCL; each
    rank takes the GPU of its local rank.
    """
    size = launched_ranks()
    if size == 1:
        return Ranks.single(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get(LOCAL_RANK, "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Ranks(dist.get_rank(), dist.get_world_size()), device


def stop_ranks(ranks: Ranks) -> None:
    """Leave the process group :func:`start_ranks` joined, once every rank is here (a collective).

    Only where every rank arrives: a rank that failed alone exits without it,
    and ``torchrun`` stops the others.
    """
    if ranks.shared:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
