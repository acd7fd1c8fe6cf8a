"""One run over several processes: ``torchrun --nproc_per_node N -m endebias train ...``.

Data parallel with exact EnD over the *global* batch:

* every process draws the same shuffled order (the same seeded generator) and takes its
  own contiguous share of each global batch of ``batch_size`` samples, so together the
  processes see exactly the batches of a one-process run;
* EnD depends on a batch only through its per-(target, bias) sums (``regularizer``), so
  those ``(T*C, F+2)`` sums are all-reduced, autograd-aware, instead of gathering
  features: each process computes the global loss, and the backward all-reduce of the
  all-reduce sends every process the gradient for its own samples;
* DistributedDataParallel averages gradients over processes. Scaling each local loss by
  ``N * local_size / global_size`` makes that average the gradient of the global batch's
  mean loss even when shares differ in size (the last batch), and keeps the EnD part exact
  (the weights sum to N, which the backward all-reduce of the sums brings in);
* on CUDA, BatchNorm layers become SyncBatchNorm, so normalisation statistics are those of
  the global batch too (torch supports SyncBatchNorm on GPUs only; on CPU, with gloo,
  each process normalises with its own share's statistics);
* metrics are summed over processes; only rank 0 writes records and checkpoints.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from endebias.data import Split

# The autograd-aware all-reduce; torch 2.13 marks it deprecated in favour of functional
# collectives, whose autograd support only arrived after torch 2.4 (our floor).
warnings.filterwarnings(
    "ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated",
    category=FutureWarning,
)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str) -> tuple[DistContext | None, bool]:
    """Join the process group that torchrun's environment describes (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); ``(None, False)`` for a one-process run.

    Returns the context and whether the group was created here (and must be torn down
    here). A group the caller already initialised is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if world == 1:
            return None, False
        return DistContext(rank, world, int(os.environ.get("LOCAL_RANK", rank))), False
    if not launched_by_torchrun():
        return None, False
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed: run one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are "
                "visible: use --nproc_per_node <= the number of GPUs per node"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank), True


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device, context: DistContext | None) -> torch.device:
    """``cuda`` means this process's own GPU (``cuda:LOCAL_RANK``) in a multi-process run."""
    if context is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", context.local_rank)
    return device


def barrier(context: DistContext | None) -> None:
    if context is not None:
        dist.barrier()


def global_batches(order: Tensor, batch_size: int, context: DistContext | None) -> list[Tensor]:
    """The global batches of one epoch. A last batch too small to give every process a
    sample joins the batch before it (one process: the plain split)."""
    batches = list(order.split(batch_size))
    if context is not None and len(batches) > 1 and len(batches[-1]) < context.world_size:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def local_share(batch: Tensor, context: DistContext | None) -> tuple[Tensor, float]:
    """This process's contiguous share of a global batch, and the weight of its loss:
    ``N * local / global``, so that DDP's gradient average is the global mean's gradient."""
    if context is None:
        return batch, 1.0
    share = batch.tensor_split(context.world_size)[context.rank]
    return share, context.world_size * len(share) / len(batch)


def shard_split(split: Split, context: DistContext | None) -> Split:
    """A contiguous share of an evaluation split; the counts are summed over processes."""
    if context is None:
        return split
    rank, world = context.rank, context.world_size
    return Split(
        split.inputs.tensor_split(world)[rank],
        split.targets.tensor_split(world)[rank],
        split.biases.tensor_split(world)[rank],
    )


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over processes, differentiable: the backward pass sums the gradients too.

    This is the ``reduce_group_sums`` hook of :func:`endebias.regularizer.end_terms`.
    It enqueues a collective and never reads a value on the host.
    """
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor, op=dist.ReduceOp.SUM)


def sum_over_ranks(tensor: Tensor, context: DistContext | None) -> Tensor:
    """Metric totals summed over processes (no autograd)."""
    if context is None:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def finite_members(losses: Tensor, context: DistContext | None) -> list[bool]:
    """Per member, whether its loss is finite on every process; all processes stop a
    member together otherwise (a process that stopped alone would leave the others
    waiting in a collective)."""
    finite = torch.isfinite(losses.detach()).to(torch.int32)
    if context is not None:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return [bool(value) for value in finite.tolist()]


def prepare_method(method: nn.Module, context: DistContext | None, device: torch.device) -> None:
    """Set the EnD reducer and, on GPUs, global-batch BatchNorm statistics (in place)."""
    if context is None:
        return
    if getattr(method, "pairs", "all") != "all":
        # Caught here, before any training: the paper preset's EnD default is the official
        # code's pair selection, which depends on the order of samples within one batch.
        raise ValueError(
            f"EnD with pairs={method.pairs!r} cannot span several processes (its pairs "
            "depend on the order within one batch); add --method-option pairs=all"
        )
    method.reduce_group_sums = all_reduce_sum
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(method)  # replaces BN children in place


class _TrainingStep(nn.Module):
    """DDP only synchronises gradients of work done through its ``forward``; this makes the
    method's training step that forward."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        return self.method.training_step(inputs, targets, biases, indices)


def wrap_step(method: nn.Module, context: DistContext | None, device: torch.device):
    """The callable the trainer runs each step: the method's own ``training_step``, or the
    same step inside DistributedDataParallel."""
    if context is None:
        return method.training_step
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(_TrainingStep(method), device_ids=device_ids)
