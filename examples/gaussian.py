"""The seed tutorial (Pyro's CSIS tutorial) with no hand-written guide."""
import math
import sys
import warnings
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import csis_dsl  # noqa: E402

here = Path(__file__).resolve().parent
model = csis_dsl.compile(here.parent / "specs" / "gaussian.ppl")
# the tutorial's budget: 2000 steps x 10 traces
model.train(num_steps=2000, batch_size=10, seed=0, progress=False)
obs = {"x1": 8.0, "x2": 9.0}
post = model.infer(obs, num_samples=50, seed=1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    prior_is = model.infer(obs, num_samples=50, proposal="prior", seed=1)
sd = math.sqrt(5 / 6)
print(f"analytic posterior : mean 7.250 std {sd:.3f}")
print(f"CSIS (50 samples)  : mean {float(post.mean('z')):.3f} std {float(post.std('z')):.3f}"
      f"  ESS {post.ess:.1f}")
print(f"prior IS (50)      : mean {float(prior_is.mean('z')):.3f}  ESS {prior_is.ess:.1f}")

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("gaussian_csis.png")
z = torch.linspace(-6, 12, 400)
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(z, torch.distributions.Normal(1.0, math.sqrt(5)).log_prob(z).exp(), label="prior")
ax.plot(z, torch.distributions.Normal(7.25, sd).log_prob(z).exp(), label="analytic posterior")
ax.hist(post.sample("z", 2000, seed=0).numpy(), bins=30, density=True, alpha=0.5,
        label="CSIS (resampled)")
ax.hist(prior_is.sample("z", 2000, seed=0).numpy(), bins=30, density=True, alpha=0.5,
        label="importance sampling from the prior")
ax.legend()
fig.savefig(out, dpi=110)
print(f"figure: {out}")
