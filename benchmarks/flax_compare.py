"""The same custom GRU cell in Flax and in unrolled: a training step, side by side in one process.

    python benchmarks/flax_compare.py [--shapes S,M] [--repeats 9]

The cell is docs/custom_cells.md's GRU (torch's formulation: ``n = tanh(x_n + r * (W_hn h +
b_hn))``), written once as an ``unrolled.Cell`` run by ``unrolled.Recurrent`` and once as a
``flax.linen`` cell run by ``flax.linen.RNN`` (a ``jax.lax.scan`` under ``jax.jit``: XLA
compiles the whole loop, fusing each step's elementwise math). Both get the same weights (the
outputs are checked equal before timing). A training step is the forward, the loss
``output.sum()`` and the gradients of every parameter (and of the input, in both): in torch
``loss.backward()``, in JAX ``jax.jit(jax.grad(loss))`` with ``block_until_ready``. No optimizer
step in either. torch.nn.GRU and unrolled's fast GRU run the same shapes as anchors.

Flax and JAX are an optional extra (``pip install -e '.[flax]'``): without them the script says
so and exits 0. Times are medians of interleaved repeats on the CPU; JAX's XLA runtime uses its
own thread pool (all cores), torch uses ``torch.get_num_threads()``: both printed.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch
from paths import MyGRU  # docs/custom_cells.md's GRU, the cell benchmarks/paths.py times too
from torch import nn

import unrolled
from unrolled.tools import benchmark

try:
    import jax
    import jax.numpy as jnp
    from flax import linen
except ImportError as error:  # the optional extra is absent
    jax = None
    MISSING = str(error)


def flax_cell_class():
    """The same cell in flax.linen (defined here: flax is imported only when present)."""

    class FlaxGRU(linen.RNNCellBase):
        features: int

        @linen.compact
        def __call__(self, h, x):
            xp = linen.Dense(3 * self.features, name="ih")(x)  # (B, I) @ (I, 3H)
            hp = linen.Dense(3 * self.features, name="hh")(h)  # (B, H) @ (H, 3H)
            x_r, x_z, x_n = jnp.split(xp, 3, axis=-1)
            h_r, h_z, h_n = jnp.split(hp, 3, axis=-1)
            r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
            h = (1 - z) * jnp.tanh(x_n + r * h_n) + z * h
            return h, h

        def initialize_carry(self, rng, input_shape):
            return jnp.zeros((*input_shape[:-1], self.features))

        @property
        def num_feature_axes(self) -> int:
            return 1

    return FlaxGRU


def flax_params(cell: MyGRU) -> dict:
    """The unrolled cell's weights as the Flax cell's params (Dense kernels are (in, out))."""

    def dense(linear: nn.Linear) -> dict:
        return {"kernel": jnp.asarray(linear.weight.detach().T.numpy()),
                "bias": jnp.asarray(linear.bias.detach().numpy())}  # fmt: skip

    return {"params": {"cell": {"ih": dense(cell.ih), "hh": dense(cell.hh)}}}


def interleaved(calls: dict, repeats: int, min_sample_s: float = 0.05) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation. Between two blocks the
    process sleeps a little, untimed: XLA's worker threads spin for a while after a call, and
    on a small machine they would take the cores from the next block."""
    numbers = {}
    for name, call in calls.items():
        call()
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < min_sample_s:
            call()
            count += 1
        numbers[name] = max(1, count)
    samples = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(numbers[name]):
                call()
            samples[name].append((time.perf_counter() - start) / numbers[name])
            time.sleep(0.05)
    return {name: statistics.median(s) for name, s in samples.items()}


def measure(shape: benchmark.Shape, repeats: int) -> dict[str, float]:
    batch, steps, size, hidden = shape.batch, shape.steps, shape.input_size, shape.hidden_size
    torch.manual_seed(0)
    ours = unrolled.Recurrent(lambda n: MyGRU(n, hidden), size)
    plain = copy.deepcopy(ours)  # the same cell, its step not captured: one call per step
    for cell in plain.cells:
        cell.capture = False
    x = torch.randn(steps, batch, size)
    x_leaf = x.clone().requires_grad_()
    model = linen.RNN(flax_cell_class()(hidden))
    params = flax_params(ours.cells[0])
    x_flax = jnp.asarray(x.transpose(0, 1).numpy())  # (B, T, I): linen.RNN is batch-major

    def flax_loss(params, x):
        return model.apply(params, x).sum()

    flax_grad = jax.jit(jax.grad(flax_loss, argnums=(0, 1)))
    with torch.no_grad():  # the same numbers before any timing
        want = ours(x)[0].transpose(0, 1).numpy()
    got = model.apply(params, x_flax)
    difference = float(abs(got - want).max())
    assert difference < 1e-4, f"Flax and unrolled disagree by {difference}"

    def unrolled_step(model=ours):
        model(x_leaf)[0].sum().backward()

    def flax_step():
        jax.block_until_ready(flax_grad(params, x_flax))

    torch_gru = nn.GRU(size, hidden)
    fast_gru = unrolled.GRU(size, hidden)

    def torch_step(layer=torch_gru):
        layer(x_leaf)[0].sum().backward()

    calls = {"unrolled custom cell": unrolled_step, "Flax custom cell (jit)": flax_step,
             "unrolled, not captured": lambda: unrolled_step(plain),
             "torch.nn.GRU": torch_step,
             "unrolled.GRU (fast)": lambda: torch_step(fast_gru)}  # fmt: skip
    return interleaved(calls, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="S,M", help="bench shape names or BxTxIxH")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    if jax is None:
        print(f"skipped: Flax and JAX are not installed ({MISSING}); "
              "pip install -e '.[flax]' to run this comparison")  # fmt: skip
        return
    jax.config.update("jax_platforms", "cpu")
    print(f"CPU {benchmark.cpu_model()}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); jax {jax.__version__}, flax "
          f"{sys.modules['flax'].__version__} (XLA CPU, {os.cpu_count()} cores); "
          "training step (forward + grads), float32")  # fmt: skip
    for name in args.shapes.split(","):
        shape = benchmark.parse_shape(name)
        times = measure(shape, args.repeats)
        flax = times["Flax custom cell (jit)"]
        print(f"\n{shape.name}: B={shape.batch} T={shape.steps} I={shape.input_size} "
              f"H={shape.hidden_size}, 1 layer")  # fmt: skip
        for label, seconds in times.items():
            print(f"  {label:24s} {seconds * 1e3:9.2f} ms   {seconds / flax:6.2f}x Flax")


if __name__ == "__main__":
    main()
