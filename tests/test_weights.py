"""Importance weights that hold up (issue 15), on the four-mode SLCP posterior
(specs/slcp.ppl) against its reference (bench/slcp/reference.json, adaptive importance
sampling on the folded posterior): longer training with keep_best never gives a worse
answer than shorter training, and the defensive proposal covers all four modes, so the
marginal means and sds match the reference."""
import json

import torch

import csis_dsl
from conftest import ROOT, SPECS

SHORT, LONG, N = 150, 600, 20_000
REF = json.loads((ROOT / "bench" / "slcp" / "reference.json").read_text())


def test_slcp_more_training_never_makes_the_answer_worse():
    obs = {"x": REF["observation"]}
    m = csis_dsl.compile(SPECS / "slcp.ppl")
    m.train(num_steps=SHORT, batch_size=512, seed=0, progress=False, keep_best=True)
    short = m.infer(obs, num_samples=N, seed=1)
    m.train(num_steps=LONG - SHORT, batch_size=512, progress=False, keep_best=True)
    assert m.history.best_step is not None and len(m.history.val_ess) > 2
    long = m.infer(obs, num_samples=N, seed=1)
    assert long.ess >= short.ess, (short.ess, long.ess)
    mean, sd = long.mean("theta").double(), long.std("theta").double()
    ref_m = torch.tensor(REF["mean"], dtype=torch.float64)
    ref_s = torch.tensor(REF["sd"], dtype=torch.float64)
    assert ((mean - ref_m).abs() / ref_s).max() < 0.2, (mean, ref_m)
    assert ((sd / ref_s) - 1).abs().max() < 0.25, (sd, ref_s)
