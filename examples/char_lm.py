"""A character-level language model: ``unrolled.LSTM`` learns Shakespeare's Sonnets.

The text (``examples/data/sonnets.txt``, public domain, provenance in ``examples/data/README.md``)
is cut into random windows; the model reads a window and predicts every next character. The loss
is reported in bits per character (cross-entropy / ln 2): about log2(vocabulary) ~ 6 bits for a
model that knows nothing, falling as it learns spelling, words and metre. At the end the model
writes a few lines, one character at a time, carrying its ``(h, c)`` state between steps.

    python examples/char_lm.py                     # about a minute on 2 cores
    python examples/char_lm.py --steps 3000        # longer: lower bits per character
    python examples/char_lm.py --torch             # the same model on torch.nn.LSTM
    python examples/char_lm.py --clip 0            # no gradient clipping (default: norm 1.0)
    python examples/char_lm.py --tbptt 8           # back-propagate at most 8 steps (truncated BPTT)
    python examples/char_lm.py --optimizer sgd --lr 2 --clip 0.25   # where clipping matters

Every report line also gives the gradient norm before clipping (median and largest since the last
report), so the effect of ``--clip`` and ``--lr`` on it can be read off the run.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

import unrolled

DEFAULT_TEXT = Path(__file__).resolve().parent / "data" / "sonnets.txt"


class CharLM(nn.Module):
    """Embedding -> LSTM -> linear read-out over the vocabulary."""

    def __init__(
        self,
        vocab_size: int,
        *,
        embed_size: int,
        hidden_size: int,
        num_layers: int,
        use_torch: bool,
        backend: str,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        if use_torch:
            self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True)
        else:
            self.lstm = unrolled.LSTM(
                embed_size, hidden_size, num_layers, batch_first=True, backend=backend
            )
        self.read_out = nn.Linear(hidden_size, vocab_size)

    def forward(self, codes: Tensor, state=None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``codes (B, T)`` int64 -> logits ``(B, T, V)`` and the LSTM's final ``(h, c)``."""
        embedded = self.embed(codes)  # (B, T, E)
        output, state = self.lstm(embedded, state)  # (B, T, H)
        return self.read_out(output), state  # (B, T, V)


@dataclass
class Vocabulary:
    chars: list[str]

    @classmethod
    def of(cls, text: str) -> Vocabulary:
        return cls(sorted(set(text)))

    def encode(self, text: str) -> Tensor:
        index = {c: i for i, c in enumerate(self.chars)}
        return torch.tensor([index[c] for c in text], dtype=torch.int64)

    def decode(self, codes: list[int]) -> str:
        return "".join(self.chars[i] for i in codes)


@dataclass
class History:
    steps: list[int] = field(default_factory=list)
    train_bpc: list[float] = field(default_factory=list)  # mean over the steps since last report
    val_bpc: list[float] = field(default_factory=list)
    grad_norm: list[tuple[float, float]] = field(default_factory=list)  # (median, max) per report
    seconds: float = 0.0
    sample: str = ""
    model: CharLM | None = None  # the trained model, for scripts that look inside it


def bits(loss: Tensor | float) -> float:
    """Cross-entropy in nats -> bits."""
    return float(loss) / math.log(2)


def random_windows(data: Tensor, batch: int, length: int, generator: torch.Generator):
    """``batch`` windows of ``length + 1`` characters: inputs ``(B, T)`` and targets ``(B, T)``."""
    starts = torch.randint(0, len(data) - length - 1, (batch,), generator=generator)
    windows = torch.stack([data[s : s + length + 1] for s in starts.tolist()])  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def validation_bpc(model: CharLM, data: Tensor, length: int) -> float:
    """Mean bits per character over the held-out text, cut into consecutive windows."""
    model.eval()
    count = (len(data) - 1) // length
    inputs = data[: count * length].view(count, length)  # (B, T)
    targets = data[1 : count * length + 1].view(count, length)  # (B, T)
    logits, _ = model(inputs)  # (B, T, V)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    model.train()
    return bits(loss)


@torch.no_grad()
def sample(
    model: CharLM,
    vocab: Vocabulary,
    prompt: str,
    length: int,
    temperature: float,
    generator: torch.Generator,
) -> str:
    """Feed ``prompt``, then draw ``length`` characters one at a time, carrying ``(h, c)``."""
    model.eval()
    logits, state = model(vocab.encode(prompt).unsqueeze(0))  # (1, T, V)
    codes: list[int] = []
    for _ in range(length):
        probs = torch.softmax(logits[0, -1] / temperature, dim=-1)  # (V,)
        code = int(torch.multinomial(probs, 1, generator=generator))
        codes.append(code)
        logits, state = model(torch.tensor([[code]]), state)  # (1, 1, V)
    model.train()
    return prompt + vocab.decode(codes)


def train(
    *,
    text_path: str | Path = DEFAULT_TEXT,
    steps: int = 400,
    batch_size: int = 32,
    seq_len: int = 64,
    embed_size: int = 32,
    hidden_size: int = 128,
    num_layers: int = 1,
    lr: float = 5e-3,
    seed: int = 0,
    report_every: int = 50,
    use_torch: bool = False,
    backend: str = "fast",
    sample_length: int = 200,
    temperature: float = 0.8,
    prompt: str = "Shall I ",
    clip: float | None = 1.0,
    tbptt: int = 0,
    optimizer_name: str = "adam",
    log=print,
) -> History:
    """Train for ``steps`` steps; ``clip``: the gradient norm is scaled down to it (None or 0: no
    clipping); ``tbptt``: back-propagate through at most this many steps of each window (the
    forward still reads the whole window, carrying its state; 0: the whole window)."""
    text = Path(text_path).read_text(encoding="utf-8")
    vocab = Vocabulary.of(text)
    data = vocab.encode(text)  # (N,)
    split = int(0.9 * len(data))  # the last tenth is never trained on
    train_data, val_data = data[:split], data[split:]

    torch.manual_seed(seed)
    model = CharLM(
        len(vocab.chars),
        embed_size=embed_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        use_torch=use_torch,
        backend=backend,
    )
    if optimizer_name == "sgd":  # plain SGD: the step is lr x the gradient, spikes and all
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    else:  # Adam divides by a running gradient size: a spike moves the weights far less
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    windows = torch.Generator().manual_seed(seed)
    history = History()
    uniform = math.log2(len(vocab.chars))
    log(
        f"{len(text)} characters, vocabulary {len(vocab.chars)} "
        f"(a uniform guess costs {uniform:.2f} bits per character)"
    )
    history.steps.append(0)
    history.train_bpc.append(float("nan"))
    history.val_bpc.append(validation_bpc(model, val_data, seq_len))
    log(f"step {0:5d}  validation bpc {history.val_bpc[-1]:.3f}")
    start = time.perf_counter()
    running: list[float] = []
    norms: list[float] = []  # the gradient's norm before clipping, each step since the last report
    for step in range(1, steps + 1):
        inputs, targets = random_windows(train_data, batch_size, seq_len, windows)
        logits = forward_truncated(model, inputs, tbptt)  # (B, T, V)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        parameters = list(model.parameters())
        if clip:  # scales the whole gradient down to norm `clip`: a spike cannot throw the weights
            norms.append(float(nn.utils.clip_grad_norm_(parameters, clip)))
        else:
            norms.append(float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad) for p in parameters]))))  # fmt: skip
        optimizer.step()
        running.append(bits(loss.detach()))
        if step % report_every == 0 or step == steps:
            history.steps.append(step)
            history.train_bpc.append(sum(running) / len(running))
            history.val_bpc.append(validation_bpc(model, val_data, seq_len))
            history.grad_norm.append((statistics.median(norms), max(norms)))
            running, norms = [], []
            elapsed = time.perf_counter() - start
            log(
                f"step {step:5d}  train bpc {history.train_bpc[-1]:.3f}  "
                f"validation bpc {history.val_bpc[-1]:.3f}  gradient norm median "
                f"{history.grad_norm[-1][0]:.2f} max {history.grad_norm[-1][1]:.2f}  "
                f"({elapsed:.0f} s)"
            )
    history.seconds = time.perf_counter() - start
    if sample_length > 0:
        history.sample = sample(
            model, vocab, prompt, sample_length, temperature, torch.Generator().manual_seed(seed)
        )
    history.model = model
    return history


def forward_truncated(model: CharLM, inputs: Tensor, tbptt: int) -> Tensor:
    """Logits ``(B, T, V)`` of ``inputs (B, T)``; with ``0 < tbptt < T`` the window is read in
    chunks of ``tbptt`` steps, each starting from the state the previous chunk ended in, detached:
    the forward is the same numbers, but no gradient flows back across a chunk boundary."""
    if not 0 < tbptt < inputs.shape[1]:
        return model(inputs)[0]
    state, pieces = None, []
    for start in range(0, inputs.shape[1], tbptt):
        logits, state = model(inputs[:, start : start + tbptt], state)  # (B, k, V)
        state = tuple(s.detach() for s in state)  # the cut: BPTT stops here
        pieces.append(logits)
    return torch.cat(pieces, dim=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", default=str(DEFAULT_TEXT), help="a UTF-8 text file")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    # Per-step matmuls this small gain nothing from intra-op threads, and on a busy machine
    # OpenMP threads that wait for each other can make a run many times slower.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--report-every", type=int, default=50)
    parser.add_argument("--backend", choices=("fast", "reference"), default="fast")
    parser.add_argument("--torch", action="store_true", help="use torch.nn.LSTM instead")
    parser.add_argument("--sample-length", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--prompt", default="Shall I ")
    parser.add_argument("--clip", type=float, default=1.0,
                        help="clip the gradient norm to this (0: none; default 1.0)")  # fmt: skip
    parser.add_argument("--tbptt", type=int, default=0,
                        help="back-propagate through at most this many steps (default 0: the "
                             "whole --seq-len window)")  # fmt: skip
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    args = parser.parse_args(argv)
    if args.clip < 0 or args.tbptt < 0:
        parser.error(f"--clip and --tbptt must be >= 0, got {args.clip} and {args.tbptt}")
    if args.threads:
        torch.set_num_threads(args.threads)

    history = train(
        text_path=args.text,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        lr=args.lr,
        seed=args.seed,
        report_every=args.report_every,
        use_torch=args.torch,
        backend=args.backend,
        sample_length=args.sample_length,
        temperature=args.temperature,
        prompt=args.prompt,
        clip=args.clip,
        tbptt=args.tbptt,
        optimizer_name=args.optimizer,
    )
    layer = "torch.nn.LSTM" if args.torch else f"unrolled.LSTM(backend={args.backend!r})"
    print(f"{layer}: {args.steps} steps in {history.seconds:.1f} s")
    if history.sample:
        print("\n--- sample ---\n" + history.sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
