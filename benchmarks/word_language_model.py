"""A real client: PyTorch's word_language_model example, its LSTM from torch.nn or from unrolled.

The model and the training step of ``pytorch/examples/word_language_model`` (``model.py``'s
RNNModel with ``--model LSTM``, ``main.py``'s ``train()`` and ``evaluate()``), at its defaults:
2 layers, emsize = nhid = 200, bptt 35, batch 20, dropout 0.2, clip 0.25, lr 20, a vocabulary
the size of Wikitext-2's (33278 words). The tokens are random (no download; the time per batch
does not depend on which words they are). Both models hold the same weights; their batches are
interleaved in one process and the medians compared:

    .venv/bin/python benchmarks/word_language_model.py [--threads 2] [--batches 20] [--compiled]

Prints the CPU, the per-batch times of training and evaluation for torch.nn and unrolled, and
their ratios (unrolled / torch, below 1 = unrolled is faster); then the same for the LSTM alone
(its forward and backward inside a training batch; its forward inside an evaluation batch):
with Wikitext-2's vocabulary the decoder (200 x 33278, its log-softmax and their backward) takes
most of a batch, so the whole-batch ratio says little about the recurrent layers.
``--vocabulary 10000`` gives Penn Treebank's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import unrolled
from unrolled.tools import benchmark

WIKITEXT2_VOCABULARY = 33278  # as the example's default corpus gives it


class RNNModel(nn.Module):
    """Encoder, LSTM, decoder: the example's RNNModel for ``--model LSTM`` (untied weights)."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nlayers, self.nhid = nlayers, nhid
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens, hidden):
        emb = self.drop(self.encoder(tokens))  # (T, B, ninp)
        output, hidden = self.rnn(emb, hidden)  # (T, B, nhid)
        decoded = self.decoder(self.drop(output)).view(-1, self.decoder.out_features)
        return nn.functional.log_softmax(decoded, dim=1), hidden  # (T*B, ntoken)

    def init_hidden(self, batch: int):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, batch, self.nhid),
                weight.new_zeros(self.nlayers, batch, self.nhid))  # fmt: skip


def detach(hidden):
    return tuple(h.detach() for h in hidden)


def train_batch(model, hidden, data, targets, lr=20.0, clip=0.25):
    """main.py's train() body for one batch: forward, NLL loss, backward, clip, SGD."""
    model.zero_grad()
    hidden = detach(hidden)
    output, hidden = model(data, hidden)
    loss = nn.functional.nll_loss(output, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)
    return hidden


def eval_batch(model, hidden, data, targets):
    """main.py's evaluate() body for one batch (no_grad)."""
    with torch.no_grad():
        output, hidden = model(data, hidden)
        nn.functional.nll_loss(output, targets)
    return detach(hidden)


def lstm_train(model, hidden, data, targets):
    """The LSTM's share of a training batch: its forward on the embedded batch, and backward."""
    emb = model.drop(model.encoder(data)).detach()  # (T, B, ninp), not timed as the LSTM's
    output, hidden = model.rnn(emb, detach(hidden))
    output.sum().backward()
    return hidden


def lstm_eval(model, hidden, data, targets):
    """The LSTM's share of an evaluation batch: its forward (no_grad)."""
    with torch.no_grad():
        output, hidden = model.rnn(model.encoder(data), hidden)
    return hidden


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batches", type=int, default=20, help="timed batches per phase")
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--vocabulary", type=int, default=WIKITEXT2_VOCABULARY)
    parser.add_argument("--compiled", action="store_true",
                        help="also torch.compile both whole models (inductor): training and "
                             "evaluation batches")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocabulary = args.vocabulary
    models = {"torch": RNNModel(vocabulary, 200, 200, 2, 0.2)}
    models["unrolled"] = copy.deepcopy(models["torch"])
    models["unrolled"].rnn = unrolled.from_torch(models["torch"].rnn)
    if args.compiled:  # copies with the same weights, each compiled whole
        for name in ("torch", "unrolled"):
            models[f"{name} compiled"] = torch.compile(copy.deepcopy(models[name]))
    generator = torch.Generator().manual_seed(1)
    shape = (args.bptt, args.batch_size)
    batches = [
        (torch.randint(vocabulary, shape, generator=generator),
         torch.randint(vocabulary, shape, generator=generator).view(-1))
        for _ in range(args.batches)
    ]  # fmt: skip
    print(
        f"CPU {benchmark.cpu_model()} ({benchmark.cpu_vendor()}), torch threads {args.threads}, "
        f"vocabulary {vocabulary}, bptt {args.bptt}, batch {args.batch_size}"
    )
    print(f"plan: {unrolled.plan(models['unrolled'].rnn, torch.zeros(*shape, 200))}")
    phases = (("train", train_batch), ("eval", eval_batch),
              ("LSTM alone, train", lstm_train), ("LSTM alone, eval", lstm_eval))  # fmt: skip
    for phase, step in phases:
        # the LSTM alone is timed eagerly (a compiled model's .rnn is its eager submodule)
        timed = {n: m for n, m in models.items() if "compiled" not in n or "alone" not in phase}
        hidden = {name: model.init_hidden(args.batch_size) for name, model in timed.items()}
        for name, model in timed.items():
            model.train(phase.endswith("train"))
            for data, targets in batches[:3]:  # warm up
                hidden[name] = step(model, hidden[name], data, targets)
        times = {name: [] for name in timed}
        for index, (data, targets) in enumerate(batches):
            order = list(timed) if index % 2 == 0 else list(reversed(timed))
            for name in order:
                start = time.perf_counter()
                hidden[name] = step(timed[name], hidden[name], data, targets)
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(
            f"{phase}: torch.nn {medians['torch'] * 1e3:.1f} ms/batch, unrolled "
            f"{medians['unrolled'] * 1e3:.1f} ms/batch, ratio "
            f"{medians['unrolled'] / medians['torch']:.2f}"
        )
        for name in (n for n in timed if "compiled" in n):
            print(
                f"    {name}: {medians[name] * 1e3:.1f} ms/batch, / torch.nn eager "
                f"{medians[name] / medians['torch']:.2f}, / {name.split()[0]} eager "
                f"{medians[name] / medians[name.split()[0]]:.2f}"
            )


if __name__ == "__main__":
    main()
