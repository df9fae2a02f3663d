"""Classify scikit-learn's handwritten digits with a bidirectional ``unrolled.GRU``.

Each 8x8 image is read as a sequence of 8 rows (T=8 steps of I=8 pixels). The final hidden states
of the two directions are concatenated and fed to a linear classifier. Nothing is downloaded: the
1797 digits ship with scikit-learn (``pip install unrolled[examples]``).

    python examples/digits.py                    # unrolled.GRU (backend="fast")
    python examples/digits.py --backend reference
    python examples/digits.py --torch            # the same model on torch.nn.GRU, same seed
    python examples/digits.py --plot curves.png  # loss and accuracy curves (needs matplotlib)

``--torch`` builds the same network from the same seed: unrolled initialises its parameters in
torch's order with torch's distribution, so both start from identical weights, see the same
batches, and trace the same curve up to float rounding.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import unrolled

NUM_CLASSES = 10
ROWS = COLUMNS = 8


class DigitClassifier(nn.Module):
    """Bidirectional GRU over the image rows, then a linear layer on both final states."""

    def __init__(self, hidden_size: int, *, use_torch: bool, backend: str) -> None:
        super().__init__()
        if use_torch:
            self.gru = nn.GRU(COLUMNS, hidden_size, batch_first=True, bidirectional=True)
        else:
            self.gru = unrolled.GRU(
                COLUMNS, hidden_size, batch_first=True, bidirectional=True, backend=backend
            )
        self.classify = nn.Linear(2 * hidden_size, NUM_CLASSES)

    def forward(self, images: Tensor) -> Tensor:
        """``images (B, 8, 8)`` -> logits ``(B, 10)``."""
        _, h_n = self.gru(images)  # h_n (2, B, H): forward's state after row 7, reverse's after 0
        both = torch.cat([h_n[0], h_n[1]], dim=-1)  # (B, 2H)
        return self.classify(both)  # (B, 10)


@dataclass
class History:
    """What training produced, per step and per epoch."""

    step_loss: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def load_data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as ``(N, 8, 8)`` floats in [0, 1] and int64 labels; a stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (N, 8, 8), pixels 0..16
    labels = torch.tensor(digits.target, dtype=torch.int64)  # (N,)
    train_idx, test_idx = train_test_split(
        range(len(labels)), test_size=0.2, random_state=seed, stratify=digits.target
    )
    train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    model.eval()
    predictions = model(images).argmax(dim=-1)
    model.train()
    return (predictions == labels).float().mean().item()


def train(
    *,
    epochs: int = 12,
    hidden_size: int = 64,
    batch_size: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
    use_torch: bool = False,
    backend: str = "fast",
    progress: bool = True,
    max_steps: int | None = None,
) -> History:
    """Train and evaluate; ``max_steps`` stops early (tests use it to compare curves)."""
    train_x, train_y, test_x, test_y = load_data(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(hidden_size, use_torch=use_torch, backend=backend)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(seed)  # its own stream: same batches for both models
    history = History()
    start = time.perf_counter()
    steps_per_epoch = -(-len(train_y) // batch_size)
    with _progress_bar(progress) as bar:
        for epoch in range(epochs):
            label = f"epoch {epoch + 1:2d}/{epochs}"
            task = bar.add_task(label, total=steps_per_epoch)
            order = torch.randperm(len(train_y), generator=shuffle)
            losses = []
            for first in range(0, len(train_y), batch_size):
                batch = order[first : first + batch_size]
                loss = loss_fn(model(train_x[batch]), train_y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                history.step_loss.append(loss.item())
                running_loss = sum(losses) / len(losses)
                bar.update(task, advance=1, description=f"{label} loss {running_loss:.4f}")
                if max_steps is not None and len(history.step_loss) >= max_steps:
                    break
            history.epoch_loss.append(sum(losses) / len(losses))
            history.train_accuracy.append(accuracy(model, train_x, train_y))
            history.test_accuracy.append(accuracy(model, test_x, test_y))
            summary = f"loss {history.epoch_loss[-1]:.4f} test {history.test_accuracy[-1]:.4f}"
            bar.update(task, description=f"{label} {summary}")
            if max_steps is not None and len(history.step_loss) >= max_steps:
                break
    history.seconds = time.perf_counter() - start
    return history


def _progress_bar(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
    )


def plot(history: History, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history.epoch_loss) + 1)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, history.epoch_loss, marker="o")
    loss_ax.set(xlabel="epoch", ylabel="mean training loss", title="cross-entropy", yscale="log")
    acc_ax.plot(epochs, history.train_accuracy, marker="o", label="train")
    acc_ax.plot(epochs, history.test_accuracy, marker="o", label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    acc_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    # Per-step matmuls this small gain nothing from intra-op threads, and on a busy machine
    # OpenMP threads that wait for each other can make a run many times slower.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--backend", choices=("fast", "reference"), default="fast")
    parser.add_argument("--torch", action="store_true", help="use torch.nn.GRU instead")
    parser.add_argument("--plot", metavar="FILE.png", help="write loss and accuracy curves")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    history = train(
        epochs=args.epochs,
        hidden_size=args.hidden_size,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        use_torch=args.torch,
        backend=args.backend,
        progress=not args.no_progress,
    )
    if args.plot:
        plot(history, args.plot)
        print(f"curves written to {args.plot}")
    layer = "torch.nn.GRU" if args.torch else f"unrolled.GRU(backend={args.backend!r})"
    print(f"{layer}: {args.epochs} epochs in {history.seconds:.1f} s")
    print(f"test accuracy: {history.test_accuracy[-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
