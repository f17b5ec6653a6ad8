"""The reference posterior of specs/garch.ppl on its data (writes reference.json).

Adaptive importance sampling (bench/_ais.py), vectorised, written here independently of
the compiler (the volatility recursion is a loop over time on 10^6 draws at once), in
unconstrained coordinates z (mu, and the logit of each uniform's position in its
interval, so that beta1's bound 1 - alpha1 holds by construction): 5 x 10^6 draws from
the prior (mu from a Normal around the sample mean instead), then 10^7 from a
multivariate Student-t fitted to them, mixed with that start (weight 0.1) so that the
weights stay bounded. The script stops unless the ESS is at least 10^5 and two random
halves of the draws agree to 0.02 posterior sd. (Its Pareto k-hat is about 0.9: the rare
defensive draws on the alpha0-beta1 ridge carry the largest weights; with an ESS near
1.5 x 10^6 their effect on means and sds is far below the tolerances tested.)

Pyro NUTS was tried first, two chains of 1000 warm-up + 3000 draws on the same model
written by hand: split R-hat 1.25. When alpha1 is near 0, alpha0 and beta1 trade off
along a ridge that the chains explore at different rates.

    python bench/garch/reference.py
"""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
SPEC = HERE.parents[1] / "specs"
sys.path.insert(0, str(HERE.parent))
import _ais  # noqa: E402

NAMES = ("mu", "alpha0", "alpha1", "beta1", "sigma1")


def params(z):
    u = torch.sigmoid(z[:, 1:])
    a1 = u[:, 1]
    return (z[:, 0], 0.001 + 0.999 * u[:, 0], a1, (1 - a1) * u[:, 2], 0.05 + 2.95 * u[:, 3])


def log_target(y, z):
    """log prior + log likelihood per unit volume of z (each uniform's density times its
    Jacobian is the logistic density of its z)."""
    mu, a0, a1, b1, s = params(z)
    out = torch.distributions.Normal(0.0, 0.5).log_prob(mu)
    out = out + (F.logsigmoid(z[:, 1:]) + F.logsigmoid(-z[:, 1:])).sum(-1)
    out = out + torch.distributions.Normal(mu, s).log_prob(y[0])
    for t in range(1, len(y)):
        s = torch.sqrt(a0 + a1 * (y[t - 1] - mu) ** 2 + b1 * s * s)
        out = out + torch.distributions.Normal(mu, s).log_prob(y[t])
    return out


class Start:
    """The prior, except mu from a Normal around the sample mean (posterior sd x 4)."""

    def __init__(self, y):
        self.mu = torch.distributions.Normal(float(y.mean()), 0.2)

    def sample(self, n, g):
        u = torch.rand(n, 4, generator=g).clamp(1e-12, 1 - 1e-12)
        return torch.cat([self.mu.sample((n, 1)), torch.logit(u)], -1)

    def log_prob(self, z):
        return self.mu.log_prob(z[:, 0]) + (F.logsigmoid(z[:, 1:])
                                           + F.logsigmoid(-z[:, 1:])).sum(-1)


def main():
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    y = torch.tensor(json.loads((SPEC / "garch.json").read_text())["observations"]["y"])
    lw, z = _ais.adapt(lambda z: log_target(y, z), Start(y), g, rounds=(5_000_000,),
                       final=10_000_000)
    post, ess, khat, halves = _ais.summary(lw, torch.stack(params(z), -1), NAMES)
    print(f"ESS {ess:.0f} of {len(lw)}, k-hat {khat:.2f}, halves agree to {halves:.3f} sd")
    if halves > 0.02 or ess < 1e5:
        raise SystemExit("not trustworthy yet; draw more or adapt again")
    out = {"method": f"adaptive importance sampling (bench/_ais.py), {len(lw):.0e} draws, "
                     f"ESS {ess:.0f}, k-hat {khat:.2f}, halves agree to {halves:.3f} sd",
           "posterior": post}
    (HERE / "reference.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(post, indent=1))


if __name__ == "__main__":
    main()
