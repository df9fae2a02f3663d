"""Data-parallel training of an ``unrolled`` layer under ``DistributedDataParallel``.

    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py
    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --mode gru --backend reference

The task is the adding problem (Hochreiter & Schmidhuber, 1997): each step of a sequence carries a
random number in [0, 1) and a marker; exactly two steps are marked, and the model must output the
sum of the two marked numbers after reading the whole sequence. Always answering 1.0 (the mean)
scores a mean squared error of 1/6 ~ 0.167; a recurrent net that learned to remember the marked
values gets far below that.

Every process draws its own batches, computes a *mean* loss, and DDP averages the gradients over
all processes, so each optimizer step equals one step on the concatenated batch. The processes
talk over gloo on CPU, or NCCL when each process has a CUDA device of its own. At the end the
script gathers every process's parameters and checks that they are still identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import unrolled

LAYERS = {"rnn": unrolled.RNN, "lstm": unrolled.LSTM, "gru": unrolled.GRU}


class Adder(nn.Module):
    """A recurrent layer over ``(value, marker)`` pairs, then a linear read-out of the last step."""

    def __init__(self, mode: str, hidden_size: int, backend: str) -> None:
        super().__init__()
        self.recurrent = LAYERS[mode](2, hidden_size, batch_first=True, backend=backend)
        self.read_out = nn.Linear(hidden_size, 1)

    def forward(self, sequences: Tensor) -> Tensor:
        """``sequences (B, T, 2)`` -> predicted sums ``(B,)``."""
        output, _ = self.recurrent(sequences)  # (B, T, H)
        return self.read_out(output[:, -1]).squeeze(-1)  # (B,)


def adding_batch(batch: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch`` sequences ``(B, T, 2)`` of (value, marker) and their targets ``(B,)``."""
    values = torch.rand(batch, length, generator=generator)  # (B, T)
    # one mark in each half, so the model must carry a value across many steps
    first = torch.randint(0, length // 2, (batch,), generator=generator)
    second = torch.randint(length // 2, length, (batch,), generator=generator)
    markers = torch.zeros(batch, length)  # (B, T)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]  # (B,)
    return torch.stack([values, markers], dim=-1), targets  # (B, T, 2), (B,)


def choose_backend(world_size: int) -> str:
    """NCCL when every local process can own a CUDA device, gloo (CPU) otherwise."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        return "nccl"
    return "gloo"


def parameters_identical_across_ranks(model: nn.Module) -> bool:
    """Gather every rank's flattened parameters and compare them bit for bit."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # (N,)
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(LAYERS), default="lstm")
    parser.add_argument("--backend", choices=("fast", "reference"), default="fast")
    parser.add_argument("--dist-backend", choices=("auto", "gloo", "nccl"), default="auto")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--seq-len", type=int, default=20)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-every", type=int, default=100)
    args = parser.parse_args(argv)

    if "RANK" not in os.environ:
        print("launch with: torchrun --standalone --nproc_per_node=2 examples/train_ddp.py")
        return 2
    world_size = int(os.environ["WORLD_SIZE"])
    dist_backend = choose_backend(world_size) if args.dist_backend == "auto" else args.dist_backend
    dist.init_process_group(dist_backend)
    rank = dist.get_rank()
    if dist_backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    torch.manual_seed(args.seed)  # DDP also broadcasts rank 0's weights, this just makes it moot
    model = Adder(args.mode, args.hidden_size, args.backend).to(device)
    model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(args.seed * 1000 + rank)  # each rank its own batches
    if rank == 0:
        layer = f"unrolled.{LAYERS[args.mode].__name__}(backend={args.backend!r})"
        print(
            f"{world_size} processes, {dist_backend} on {device.type}, {layer}; "
            "guessing the mean scores MSE 0.167"
        )

    start = time.perf_counter()
    running = torch.zeros(2, device=device)  # (sum of losses, count) since the last report
    for step in range(1, args.steps + 1):
        sequences, targets = adding_batch(args.batch_size, args.seq_len, data)
        sequences, targets = sequences.to(device), targets.to(device)
        loss = nn.functional.mse_loss(model(sequences), targets)  # a mean: DDP averages grads
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += torch.stack([loss.detach(), torch.ones((), device=device)])
        if step % args.report_every == 0 or step == args.steps:
            dist.all_reduce(running)  # the loss over every rank's batches
            if rank == 0:
                mse = running[0].item() / running[1].item()
                print(f"step {step:5d}  mse {mse:.4f}  ({time.perf_counter() - start:.1f} s)")
            running.zero_()

    identical = parameters_identical_across_ranks(model.module)
    if rank == 0:
        print(f"parameters identical across {world_size} ranks: {identical}")
    dist.destroy_process_group()
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
