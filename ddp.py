"""Training on several processes at once: torchrun and PyTorch's DistributedDataParallel (DDP).

    torchrun --nproc_per_node 2 part2_diffusion.py --preset gpu --batch-size 128

torchrun starts N copies of the script and tells each its RANK (0 to N - 1) and the WORLD_SIZE in
environment variables. Each process holds a whole copy of the model and trains on its share of the
batch, --batch-size / N images. DDP averages the gradients of all N copies during backward(), so
every copy takes the same optimiser step and the weights stay the same everywhere: N processes
train like one process with the whole batch. Rank 0 alone writes the run folder, the checkpoints,
the samples and the figures.

When it pays: more than one GPU (NCCL), or the gpu preset and CIFAR-10 on a CPU with many cores
(gloo). On a 2-core laptop it does not: one process already keeps both cores busy (measured).

Run without torchrun, every function here does nothing: rank 0 of a world of one process.
A student reading the lab can skip this file.
"""
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def rank():
    """This process's number, 0 to size() - 1 (torchrun sets RANK)."""
    return int(os.environ.get("RANK", 0))


def size():
    """How many processes train together (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main():
    """Rank 0: the one process that writes files and prints progress."""
    return rank() == 0


def start(device):
    """Join the other processes, if torchrun started several: gloo on a CPU, NCCL on GPUs, where
    each process takes the GPU of its LOCAL_RANK. Returns the device this process trains on."""
    if size() == 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def end(together=False):
    """Leave the process group (torchrun warns about a process that exits without doing so).
    together: when training has ended in every process, wait until all are here, then all leave
    at once. A process that left while another was still at work (rank 0 saving its last
    checkpoint) aborted now and then in gloo, and torchrun then killed rank 0 mid-work. After an
    error, leave at once: the others may never arrive."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def wrap(model):
    """The model, wrapped so that backward() averages its gradients across the processes. DDP also
    copies rank 0's initial weights to the others. The wrapper keeps the model as .module."""
    return DistributedDataParallel(model) if size() > 1 else model


def any_rank(flag):
    """Is `flag` true in any process? All processes must stop at the same step (one stopped alone
    would leave the others waiting for its gradients forever), so a stop asked of one (its time is
    up, Ctrl-C) is a stop for all."""
    if size() == 1:
        return bool(flag)
    flag = torch.tensor([float(bool(flag))])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def mean(value):
    """The mean of a number over all processes: each process's loss is that of its share of the
    batch; their mean is the loss of the whole batch."""
    if size() == 1:
        return value
    value = torch.tensor([float(value)])
    dist.all_reduce(value)
    return value.item() / size()


def seed_step(seed, step):
    """Give each process its own random numbers for training step `step`: batches, t and eps. The
    same numbers would make every process draw the same images and noise, and N processes would
    learn no more than one. Seeding from (seed, rank, step) at every step also makes a run of N
    processes resume exactly. One process keeps the random stream of the checkpoint instead."""
    if size() > 1:  # a different seed for every (rank, step), steps below a million
        torch.manual_seed((seed * 1_000_003 + rank()) * 1_000_003 + step)


def batches(draw_batch, images, labels, meta):
    """draw(step) for the training loop: draw_batch(images, labels, meta) for this process's share
    of the batch (batch_size / N), with the random numbers of (seed, rank, step) when N > 1."""
    share = dict(meta, batch_size=meta["batch_size"] // size())

    def draw(step):
        seed_step(meta["seed"], step)
        return draw_batch(images, labels, share)
    return draw
