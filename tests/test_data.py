"""Data files (issue 10.1): arg values from JSON or CSV (``compile(path, data=...)``,
``--data``), sizes read off the arrays and checked against given ones, observations
from CSV (``--obs-file``), and errors that name the file, row and column."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import csis_dsl
from csis_dsl.data import DataError, read_data
from conftest import ROOT

REGRESSION = """
model reg {
    arg int N;
    arg real[N] x;
    b ~ Normal(0.0, 10.0);
    for n in range(N) {
        observe y[n] ~ Normal(b * x[n], 1.0);
    }
}
"""


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "reg.ppl"
    p.write_text(REGRESSION)
    return p


def test_json_data_sets_args_and_args_override_it(spec, tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps({"N": 3, "x": [1.0, 2.0, 3.0]}))
    m = csis_dsl.compile(spec, data=data)
    assert m.args == {"N": 3, "x": [1.0, 2.0, 3.0]}
    m2 = csis_dsl.compile(spec, data=data, args={"N": 2, "x": np.array([5.0, 6.0])})
    assert m2.args == {"N": 2, "x": [5.0, 6.0]}
    m3 = csis_dsl.compile(spec, args={"x": torch.tensor([1.0, 2.0, 3.0, 4.0])})
    assert m3.args["N"] == 4                       # read off x


def test_csv_columns_are_arrays_and_sizes_are_read_off_them(spec, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1.5,3.1\n2,4.2\n-0.5,-0.9\n")
    m = csis_dsl.compile(spec, data=data)
    assert m.args["N"] == 3 and m.args["x"] == [1.5, 2.0, -0.5]
    obs = read_data(data)
    assert obs["y"].tolist() == [3.1, 4.2, -0.9]
    ints = tmp_path / "i.csv"
    ints.write_text("k\n1\n2\n")
    assert read_data(ints)["k"].dtype == np.int64
    # the posterior of b is exact (conjugate): x.y / (x.x + 1/100)
    m.train(num_steps=100, batch_size=128, seed=0, progress=False)
    post = m.infer({"y": obs["y"]}, num_samples=2000, seed=0)
    x, y = np.array([1.5, 2.0, -0.5]), obs["y"]
    prec = x @ x + 1e-2
    assert abs(float(post.mean("b")) - x @ y / prec) < 0.1 / np.sqrt(prec)


def test_a_size_mismatch_names_both_sides(spec, tmp_path):
    with pytest.raises(csis_dsl.CompileError) as e:
        csis_dsl.compile(spec, args={"N": 3, "x": [1.0, 2.0]})
    msg = str(e.value)
    assert "reg.ppl:4:" in msg and "shape [2]" in msg and "N = 3 (given)" in msg


@pytest.mark.parametrize("text, words", [
    ("x,y\n1,2\n3,\n", "row 3, column 'y': '' is not a number (an empty cell"),
    ("x,y\n1,2\n3\n", "row 3: 1 fields where the header has 2"),
    ("x,x\n1,2\n", "the column name 'x' appears twice"),
    ("x\n", "has a header but no rows"),
    ("x,y\n1,abc\n", "row 2, column 'y': 'abc' is not a number"),
])
def test_bad_csv_is_located(tmp_path, text, words):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(DataError) as e:
        read_data(p)
    assert words in str(e.value) and "bad.csv" in str(e.value)


def test_bad_json_is_located(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"x": [1, 2,]}')
    with pytest.raises(DataError, match=r"bad.json' is not valid JSON: .* line 1"):
        read_data(p)
    p.write_text("[1, 2]")
    with pytest.raises(DataError, match="one JSON object"):
        read_data(p)


def test_cli_reads_data_and_csv_observations(spec, tmp_path):
    (tmp_path / "d.csv").write_text("x\n1.0\n2.0\n3.0\n")
    (tmp_path / "y.csv").write_text("y\n1.1\n2.1\n2.9\n")
    r = subprocess.run([sys.executable, "-m", "csis_dsl.cli", "run", str(spec), "--data",
                        str(tmp_path / "d.csv"), "--obs-file", str(tmp_path / "y.csv"),
                        "--steps", "60", "--no-progress", "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert abs(out["latents"]["b"]["mean"] - 14.0 / 14.01) < 0.1
