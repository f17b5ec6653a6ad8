"""The reference posterior of specs/slcp.ppl for one observation (writes reference.json).

The observation is simulated from sbibm's first true parameter, theta = (0.7, -2.9,
-1.0, -0.9, 0.6), by the compiled model with a fixed seed. The posterior has four modes
of equal mass, one per sign of theta[2] and theta[3] (the likelihood depends on their
squares; the prior is symmetric). So the reference is computed on the folded parameters
(|theta[2]|, |theta[3]|), where it has one mode, by adaptive importance sampling
(bench/_ais.py: the prior, then fitted Student-t proposals with a defensive prior
component), written here independently of the compiler; the marginals of theta[2] and
theta[3] follow exactly: mean 0, sd = sqrt(E[theta^2]).

    python bench/slcp/reference.py
"""
import json
import math
import sys
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
import _ais  # noqa: E402
import csis_dsl  # noqa: E402

TRUE = [0.7, -2.9, -1.0, -0.9, 0.6]


def observation(model):
    from pyro import poutine
    pyro.set_rng_seed(0)
    tr = poutine.trace(poutine.condition(model.pyro_model, data={
        "theta": torch.tensor(TRUE)})).get_trace()
    return tr.nodes["_RETURN"]["value"]["x"][0]


def folded(z):
    """theta with |theta[2]|, |theta[3]| from unconstrained z (n, 5)."""
    u = torch.sigmoid(z)
    th = -3.0 + 6.0 * u
    th[:, 2:4] = 3.0 * u[:, 2:4]
    return th


def log_target(x, z):
    th = folded(z)
    s1, s2, rho = th[:, 2] ** 2, th[:, 3] ** 2, torch.tanh(th[:, 4])
    d0 = (x[:, 0][None] - th[:, 0:1]) / s1[:, None]
    d1 = (x[:, 1][None] - th[:, 1:2]) / s2[:, None]
    one_m = (1 - rho ** 2).clamp(min=1e-300)
    q = (d0 ** 2 - 2 * rho[:, None] * d0 * d1 + d1 ** 2) / one_m[:, None]
    ll = (-0.5 * q - math.log(2 * math.pi) - torch.log(s1 * s2)[:, None]
          - 0.5 * torch.log(one_m)[:, None]).sum(-1)
    return ll + (F.logsigmoid(z) + F.logsigmoid(-z)).sum(-1)


class Prior:
    def sample(self, n, g):
        return torch.logit(torch.rand(n, 5, generator=g).clamp(1e-12, 1 - 1e-12))

    def log_prob(self, z):
        return (F.logsigmoid(z) + F.logsigmoid(-z)).sum(-1)


def main():
    m = csis_dsl.compile(HERE.parents[1] / "specs" / "slcp.ppl")
    x = observation(m).double()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    lw, z = _ais.adapt(lambda z: log_target(x, z), Prior(), g,
                       rounds=(4_000_000, 1_000_000, 1_000_000), final=10_000_000)
    th = folded(z)
    cols = torch.cat([th, th[:, 2:4] ** 2], -1)
    post, ess, khat, halves = _ais.summary(lw, cols, ["t0", "t1", "a2", "a3", "t4", "q2", "q3"])
    print(f"ESS {ess:.0f} of {len(lw)}, k-hat {khat:.2f}, halves agree to {halves:.3f} sd")
    if halves > 0.02 or ess < 1e5:
        raise SystemExit("not trustworthy yet")
    sd2, sd3 = math.sqrt(post["q2"]["mean"]), math.sqrt(post["q3"]["mean"])
    out = {"observation": x.tolist(), "true_theta": TRUE,
           "method": f"adaptive importance sampling on the folded posterior, {len(lw):.0e} "
                     f"draws, ESS {ess:.0f}, k-hat {khat:.2f}, halves agree to "
                     f"{halves:.3f} sd",
           "mean": [post["t0"]["mean"], post["t1"]["mean"], 0.0, 0.0, post["t4"]["mean"]],
           "sd": [post["t0"]["sd"], post["t1"]["sd"], sd2, sd3, post["t4"]["sd"]],
           "abs": {"theta[2]": post["a2"], "theta[3]": post["a3"]}}
    (HERE / "reference.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("mean", "sd", "abs")}, indent=1))


if __name__ == "__main__":
    main()
