import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the long sweeps marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="long sweep: run with --runslow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# Plans that do not depend on the machine's mood: no measuring of runners (unrolled.tuning),
# the fused engine wherever it applies. tests/test_tuning.py measures on purpose.
os.environ.setdefault("UNROLLED_TUNING", "off")
