"""What ``unrolled verify`` runs: a fixed sweep of every mode and option, plus random cases.

A :class:`Case` is one configuration (mode, sizes, options, input form, dtype, backend). The fixed
sweep enumerates, for every layer mode, the structural core (layers x directions x input form,
and projections for LSTM) in full, and assigns the remaining options (batch_first, bias, given
initial state, dtype, dropout) so that every pair of option values of that mode appears in at
least one case ("all-pairs" covering); the cells get their full product. Every layer case is run
on both backends. Random cases draw sizes (including 1 and primes), options and uneven lengths
from a seeded generator, so a failure is reproducible from ``--seed``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from ... import modes


def _cell_name(mode: modes.Mode) -> str:
    """A cell's name in cases and reports: torch's cell class, and for the Elman cell its
    nonlinearity (``RNNCell_TANH``), since the two share one class."""
    suffix = f"_{mode.nonlinearity.upper()}" if mode.nonlinearity else ""
    return mode.cell_class + suffix


#: The recurrent layers (torch's mode names) and the single-step cells.
LAYER_MODES = modes.NAMES
#: A cell case's name -> the mode its cell steps.
CELLS = {_cell_name(mode): mode for mode in modes.MODES.values()}
CELL_MODES = tuple(CELLS)
BACKENDS = ("reference", "fast")
#: How the input reaches the layer. "lengths" is padded input with unrolled's ``lengths=``
#: (compared with torch.nn on the same data packed); "packed" is a PackedSequence built with
#: ``enforce_sorted=False`` from uneven lengths; "non-contiguous" is a strided view.
FORMS = ("dense", "unbatched", "packed", "lengths", "non-contiguous")
#: Forms whose sequences have their own lengths.
VARIABLE_LENGTH = ("packed", "lengths")


@dataclass(frozen=True)
class Case:
    """One configuration checked against torch.nn. Sizes: T steps, B batch, I input, H hidden."""

    mode: str
    backend: str = "reference"  # "reference" | "fast"; cells have one step and no backend: "cell"
    layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj_size: int = 0
    dtype: str = "float32"
    given_hx: bool = False
    form: str = "dense"
    dropout: float = 0.0
    steps: int = 5
    batch: int = 3
    input_size: int = 4
    hidden_size: int = 5
    lengths: tuple[int, ...] | None = None
    seed: int = 0
    origin: str = "sweep"  # "sweep" | "random"

    @property
    def is_cell(self) -> bool:
        return self.mode in CELL_MODES

    @property
    def recurrent_mode(self) -> modes.Mode:
        """The :class:`unrolled.modes.Mode` this case runs, a cell's included."""
        return CELLS[self.mode] if self.is_cell else modes.of(self.mode)

    def features(self) -> list[str]:
        """The rows of the summary table this case counts towards."""
        tags = ["all cases", f"backend={self.backend}"] if not self.is_cell else ["all cases"]
        if self.layers > 1:
            tags.append("multi-layer")
        if self.bidirectional:
            tags.append("bidirectional")
        if self.batch_first:
            tags.append("batch_first")
        if not self.bias:
            tags.append("bias=False")
        if self.proj_size:
            tags.append("proj_size")
        if self.given_hx:
            tags.append("hx given")
        if self.form != "dense":
            tags.append({"lengths": "lengths="}.get(self.form, self.form))
        if self.dropout:
            tags.append("dropout")
        tags.append(self.dtype)
        sizes = (self.batch, self.input_size, self.hidden_size)
        if 1 in (sizes if self.is_cell else sizes + (self.steps,)):
            tags.append("a size of 1")
        if self.origin == "random":
            tags.append("random")
        return tags

    def describe(self) -> str:
        """A short one-line name, e.g. ``LSTM/fast L2 bi P2 packed float32 #17``."""
        parts = [self.mode if self.is_cell else f"{self.mode}/{self.backend}"]
        if not self.is_cell:
            parts.append(f"L{self.layers}" + (" bi" if self.bidirectional else ""))
        parts.append(f"T{self.steps} B{self.batch} I{self.input_size} H{self.hidden_size}")
        if self.proj_size:
            parts.append(f"P{self.proj_size}")
        flags = [
            ("batch_first", self.batch_first),
            ("no-bias", not self.bias),
            ("hx", self.given_hx),
            (f"dropout={self.dropout}", bool(self.dropout)),
        ]
        parts += [self.form] + [name for name, on in flags if on] + [self.dtype]
        if self.lengths is not None:
            parts.append("lengths=" + ",".join(map(str, self.lengths)))
        return " ".join(parts) + f" seed={self.seed}"

    def to_dict(self) -> dict:
        record = asdict(self)
        record["lengths"] = list(self.lengths) if self.lengths is not None else None
        return record


def _allowed(values: dict) -> bool:
    """Option combinations that make sense; called on partial assignments too."""
    form, dropout = values.get("form"), values.get("dropout", 0.0)
    # Dropout draws its masks row by row in packed order. With lengths= the batch keeps the
    # user's order while torch's packed twin is sorted, so the masks differ in value (not in law).
    if dropout and form == "lengths":
        return False
    # Dropout acts between layers: with one layer there is nothing to compare.
    return not (dropout and values.get("layers") == 1)


def all_pairs(
    options: dict[str, tuple], core: list[str], allowed: Callable[[dict], bool]
) -> list[dict]:
    """Cases that contain every allowed pair of option values at least once.

    The ``core`` options are enumerated in full; the others are filled in greedily, each time
    with the value that covers the most pairs not yet seen, and extra cases are added until
    every allowed pair has been seen. Deterministic: the same options give the same cases.
    """
    names = list(options)
    uncovered = {
        ((a, va), (b, vb))
        for a, b in itertools.combinations(names, 2)
        for va in options[a]
        for vb in options[b]
        if allowed({a: va, b: vb})
    }

    def complete(partial: dict) -> dict:
        case = dict(partial)
        for name in names:
            if name in case:
                continue

            def gain(value, name=name):
                return sum(
                    tuple(sorted([(name, value), (other, case[other])], key=_key)) in uncovered
                    for other in case
                )

            choices = [v for v in options[name] if allowed({**case, name: v})]
            case[name] = max(choices, key=gain)  # max keeps the first of equal gains
        return case

    def mark(case: dict) -> None:
        for a, b in itertools.combinations(names, 2):
            uncovered.discard(((a, case[a]), (b, case[b])))

    cases = []
    for values in itertools.product(*(options[name] for name in core)):
        start = dict(zip(core, values))
        if allowed(start):
            cases.append(complete(start))
            mark(cases[-1])
    while uncovered:
        (a, va), (b, vb) = min(uncovered, key=lambda pair: (_key(pair[0]), _key(pair[1])))
        cases.append(complete({a: va, b: vb}))
        mark(cases[-1])
    return cases


def _key(item: tuple) -> tuple:
    """Order (name, value) pairs by option name, then by the value's text."""
    return item[0], repr(item[1])


# The order matters for all_pairs' pair keys: pairs are stored sorted by option name.
_LAYER_OPTIONS = {
    "batch_first": (False, True),
    "bias": (True, False),
    "bidirectional": (False, True),
    "dropout": (0.0, 0.5),
    "dtype": ("float32", "float64"),
    "form": FORMS,
    "given_hx": (False, True),
    "layers": (1, 2, 3),
}
_SWEEP_LENGTHS = (5, 4, 4, 2, 1)  # uneven, with repeats, not sorted by position below
_SWEEP_LENGTHS_ORDER = (2, 4, 1, 5, 4)


_EDGE_SIZES = [
    dict(steps=1, batch=3, form="lengths", lengths=(1, 1, 1)),
    dict(steps=5, batch=1, form="packed", lengths=(5,)),
    dict(input_size=1, form="dense", given_hx=True),
    dict(hidden_size=1, form="unbatched"),
]


def _canonical(options: dict) -> dict:
    """Sort option names so that ``all_pairs`` stores each pair under one key order."""
    return {name: options[name] for name in sorted(options)}


def fixed_sweep(include_dropout: bool = True) -> list[Case]:
    """The deterministic part of the campaign: every mode, every option, both backends."""
    cases: list[Case] = []
    for mode in LAYER_MODES:
        options = dict(_LAYER_OPTIONS)
        if mode == "LSTM":
            options["proj_size"] = (0, 3)
        if not include_dropout:
            options["dropout"] = (0.0,)
        options = _canonical(options)
        core = ["layers", "bidirectional", "form"] + (["proj_size"] if mode == "LSTM" else [])
        for values in all_pairs(options, core, _allowed):
            variable = values["form"] in VARIABLE_LENGTH
            for backend in BACKENDS:
                cases.append(
                    Case(
                        mode=mode,
                        backend=backend,
                        batch=len(_SWEEP_LENGTHS_ORDER),
                        lengths=_SWEEP_LENGTHS_ORDER if variable else None,
                        **values,
                    )
                )
        # Sizes of 1 (one step, one sequence, one feature, one unit) break slicing and
        # squeezing code that the size-5 cases above cannot catch.
        for edge in _EDGE_SIZES:
            for backend in BACKENDS:
                cases.append(
                    Case(mode, backend, layers=2, bidirectional=True, dtype="float64", **edge)
                )
    for mode in CELL_MODES:
        for bias, given_hx, form, dtype in itertools.product(
            (True, False), (False, True), ("dense", "unbatched"), ("float32", "float64")
        ):
            cases.append(
                Case(mode, "cell", bias=bias, given_hx=given_hx, form=form, dtype=dtype, steps=1)
            )
    return [replace(case, seed=index) for index, case in enumerate(cases)]


def quick_sweep(include_dropout: bool = True) -> list[Case]:
    """A smoke test: from the fixed sweep, the first case of every (mode, input form, backend)."""
    chosen: dict[tuple, Case] = {}
    for case in fixed_sweep(include_dropout):
        chosen.setdefault((case.mode, case.form, case.backend), case)
    return list(chosen.values())


_SIZES = (1, 2, 3, 5, 7, 8)  # ones and small primes catch off-by-one slicing and chunking


def random_cases(count: int, seed: int, include_dropout: bool = True) -> list[Case]:
    """``count`` random configurations, each run on both backends (cells: once)."""
    rng = random.Random(seed)
    cases: list[Case] = []
    while len({c.seed for c in cases}) < count:
        case_seed = rng.randrange(2**31)
        if rng.random() < 0.15:
            mode = rng.choice(CELL_MODES)
            cases.append(
                Case(
                    mode,
                    "cell",
                    bias=rng.random() < 0.7,
                    given_hx=rng.random() < 0.5,
                    form=rng.choice(("dense", "unbatched")),
                    dtype=rng.choice(("float32", "float64")),
                    steps=1,
                    batch=rng.choice(_SIZES),
                    input_size=rng.choice(_SIZES),
                    hidden_size=rng.choice(_SIZES),
                    seed=case_seed,
                    origin="random",
                )
            )
            continue
        mode = rng.choice(LAYER_MODES)
        layers = rng.choice((1, 1, 2, 2, 3))
        form = rng.choice(FORMS)
        steps, batch = rng.choice(_SIZES + (11, 13)), rng.choice(_SIZES)
        hidden = rng.choice(_SIZES)
        lengths = None
        if form in VARIABLE_LENGTH:
            lengths = [rng.randint(1, steps) for _ in range(batch)]
            lengths[rng.randrange(batch)] = steps  # the padded tensor is exactly T long
            lengths = tuple(lengths)
        dropout = 0.0
        if include_dropout and layers > 1 and form != "lengths" and rng.random() < 0.2:
            dropout = rng.choice((0.2, 0.5))
        with_projection = mode == "LSTM" and hidden > 1 and rng.random() < 0.4
        values = dict(
            mode=mode,
            layers=layers,
            bidirectional=rng.random() < 0.5,
            batch_first=rng.random() < 0.5,
            bias=rng.random() < 0.8,
            proj_size=rng.randint(1, hidden - 1) if with_projection else 0,
            dtype=rng.choice(("float32", "float64")),
            given_hx=rng.random() < 0.5,
            form=form,
            dropout=dropout,
            steps=steps,
            batch=batch,
            input_size=rng.choice(_SIZES),
            hidden_size=hidden,
            lengths=lengths,
            seed=case_seed,
            origin="random",
        )  # fmt: skip
        cases += [Case(backend=backend, **values) for backend in BACKENDS]
    return cases
