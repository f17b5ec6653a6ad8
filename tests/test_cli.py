"""The command line driven as a user would (subprocess)."""
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

import csis_dsl

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


def test_help_is_useful_on_its_own():
    r = cli("--help")
    assert r.returncode == 0 and "Exit codes" in r.stdout and "examples:" in r.stdout
    for cmd in ("check", "graph", "train", "infer", "run"):
        r = cli(cmd, "--help")
        assert r.returncode == 0 and "examples:" in r.stdout, cmd
        assert f"csis-dsl {cmd} " in r.stdout.split("examples:")[1], cmd
    r = cli("train", "--help").stdout
    for flag in ("--steps", "--batch-size", "--lr", "--arch", "--seed", "Ctrl-C"):
        assert flag in r
    assert cli("train", SPECS / "gaussian.ppl").returncode == 2     # -o is required


def test_run_rejects_bad_observations_before_training():
    r = cli("run", SPECS / "gaussian.ppl", "--obs", "x1=8", "--obs", "x3=1", "--steps",
            "100000", "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "unknown observed variable 'x3'" in r.stderr
    r = cli("run", SPECS / "counting.ppl", "--obs", "brightness=[1, 2]", "--no-progress")
    assert r.returncode == 1 and "brightness" in r.stderr


def test_a_name_given_twice_is_an_error_not_a_silent_choice():
    r = cli("run", SPECS / "gaussian.ppl", "--obs", "x1=8", "--obs", "x2=1", "--obs",
            "x2=3", "--steps", "100000", "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "--obs gives 'x2' twice (1 and 3); give each name once" in r.stderr
    r = cli("check", SPECS / "gaussian.ppl", "--arg", "prior_mean=1", "--arg",
            "prior_mean=2.5")
    assert r.returncode == 1 and "--arg gives 'prior_mean' twice (1 and 2.5)" in r.stderr


def test_infer_json_and_obs_file(tmp_path):
    ck = tmp_path / "c.pt"
    assert cli("train", SPECS / "outlier.ppl", "--steps", "200", "--no-progress",
               "-o", ck).returncode == 0
    (tmp_path / "obs.json").write_text('{"y": 12.0}')
    r = cli("infer", ck, "--obs-file", tmp_path / "obs.json", "--json", "--samples", "300")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["num_samples"] == 300 and 0 < out["ess"] <= 300
    assert set(out["latents"]) == {"mu", "is_outlier"}
    probs = out["latents"]["is_outlier"]["probabilities"]
    assert abs(sum(probs.values()) - 1) < 1e-6
    mix = out["mixture"]          # the defensive 0.1: both components broadened
    assert mix.get("broad", 0.0) + mix.get("broad program", 0.0) == pytest.approx(0.1)
    r = cli("infer", ck, "--obs-file", tmp_path / "obs.json", "--json", "--samples", "300",
            "--program", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mixture"] == pytest.approx({"program": 0.9,
                                                             "broad program": 0.1})
    r = cli("infer", ck, "--obs-file", tmp_path / "obs.json", "--program", "2")
    assert r.returncode == 2 and "--program" in r.stderr
    r = cli("infer", ck, "--obs-file", tmp_path / "missing.json")
    assert r.returncode == 1 and "cannot read observations" in r.stderr


def test_ctrl_c_stops_training_cleanly_and_saves(tmp_path):
    ck = tmp_path / "int.pt"
    p = subprocess.Popen([sys.executable, "-m", "csis_dsl.cli", "train",
                          str(SPECS / "gaussian.ppl"), "--steps", "1000000", "-o", str(ck)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # a test run started in the background of a shell inherits
                         # SIGINT ignored, and Python then never installs its handler
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    t0 = time.time()
    while "training:" not in seen and time.time() - t0 < 120:   # the progress bar started
        seen += p.stderr.read(1)
    time.sleep(2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    err = seen + err
    assert p.returncode == 0, err
    assert "Traceback" not in err and "interrupted after" in err
    m = csis_dsl.load(ck)
    assert 0 < m.history.traces < 1000000 * 64
    assert m.infer({"x1": 8, "x2": 9}, num_samples=100, seed=0).ess > 0


def test_train_with_a_plate_subsample(tmp_path):
    ck = tmp_path / "mix.pt"
    r = cli("train", SPECS / "mixture.ppl", "--arg", "N=200", "--steps", "20",
            "--batch-size", "16", "--plate-subsample", "16", "--no-progress", "-o", ck)
    assert r.returncode == 0, r.stderr
    r = cli("train", SPECS / "mixture.ppl", "--plate-subsample", "-3", "-o", ck)
    assert r.returncode == 2 and "--plate-subsample" in r.stderr
