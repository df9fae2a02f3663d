"""The parity tests' harness: run torch.nn and unrolled on the same input with the same weights,
then compare outputs, final states and every gradient. All of it lives in
:mod:`unrolled.tools.compare`, with the tolerance table ``unrolled verify`` uses too; this module
only gives the tests their short names."""

from unrolled.tools.compare import (  # noqa: F401
    assert_close,
    clone_structure,
    leaves,
    run_and_grad,
)
from unrolled.tools.compare import compare_modules as compare  # noqa: F401
