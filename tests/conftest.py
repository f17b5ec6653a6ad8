import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPECS = ROOT / "specs"


@pytest.fixture(autouse=True)
def _quiet():
    warnings.simplefilter("ignore", RuntimeWarning)
    yield
