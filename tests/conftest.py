import os
import sys
import warnings
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs in parallel workers (make test: pytest -n auto, one per core): one
    # thread each, so that the workers share the cores instead of fighting over them
    import torch
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPECS = ROOT / "specs"


@pytest.fixture(autouse=True)
def _quiet():
    warnings.simplefilter("ignore", RuntimeWarning)
    yield


def compile_spec(stem, **kw):
    """A shipped spec, with its data file (specs/<stem>.json) where it has one."""
    import csis_dsl
    data = SPECS / f"{stem}.json"
    return csis_dsl.compile(SPECS / f"{stem}.ppl", data=data if data.exists() else None, **kw)
