"""The command line driven as a user would (subprocess)."""
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, SPECS


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "csis_dsl.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT)


def test_check_ok_and_bad(tmp_path):
    r = cli("check", SPECS / "mixture.ppl")
    assert r.returncode == 0 and "latent    c: int[30] ~ Categorical" in r.stdout
    bad = tmp_path / "bad.ppl"
    bad.write_text("model m {\n  z ~ Normall(0.0, 1.0);\n  x = zz;\n}\n")
    r = cli("check", bad)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "bad.ppl:2:7: error: unknown distribution 'Normall'" in r.stderr
    assert "2 errors" in r.stderr
    assert cli("nonsense").returncode == 2


def test_graph_dot_and_images(tmp_path):
    r = cli("graph", SPECS / "mixture.ppl", "-o", tmp_path / "g.dot")
    assert r.returncode == 0 and (tmp_path / "g.dot").read_text().startswith("digraph")
    if shutil.which("dot") is None:
        r = cli("graph", SPECS / "mixture.ppl", "-o", tmp_path / "g.svg")
        assert r.returncode == 1 and "apt-get install graphviz" in r.stderr
        pytest.skip("graphviz 'dot' not installed")
    for ext, magic in (("svg", b"<svg"), ("png", b"\x89PNG")):
        out = tmp_path / f"g.{ext}"
        assert cli("graph", SPECS / "mixture.ppl", "-o", out).returncode == 0
        data = out.read_bytes()
        assert magic in data[:400] and len(data) > 1000


def test_train_infer_roundtrip(tmp_path):
    ck = tmp_path / "g.pt"
    r = cli("train", SPECS / "gaussian.ppl", "--steps", "300", "--batch-size", "32",
            "--no-progress", "-o", ck)
    assert r.returncode == 0, r.stderr
    r = cli("infer", ck, "--obs", "x1=8", "--obs", "x2=9", "--samples", "500",
            "--plot", tmp_path / "p.png")
    assert r.returncode == 0, r.stderr
    assert "ESS" in r.stdout and "z" in r.stdout
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    r = cli("infer", ck, "--obs", "x1=8", "--json")
    assert r.returncode == 1 and "missing observation for 'x2'" in r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "junk.pt").write_text("junk")
    r = cli("infer", tmp_path / "junk.pt", "--obs", "x1=1")
    assert r.returncode == 1 and "not a readable csis_dsl checkpoint" in r.stderr
