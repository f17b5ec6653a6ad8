"""Reference posteriors of the real models (run once; writes references.json).

* faithful, glucose, eight_schools, nile, coal_walk, radon, surgical, newcomb, sleep,
  anscombe, pumps, dyes: exact, by
  quadrature (exact.py).
* pima, rats: Pyro NUTS on the compiled model itself (the model a user gets).
* quakes, coal: Pyro NUTS on the same models with the discrete latents summed out by
  hand (a mixture likelihood; the forward algorithm), written here in plain Pyro; the
  posterior probabilities of the discrete latents are then exact given each draw
  (responsibilities; forward-backward), averaged over the draws.

Each NUTS reference runs two chains from different seeds; the script stops if the
split R-hat of any quantity exceeds 1.01. Stored: mean and sd of every latent element
(for a discrete latent: of its value), flattened.

    python bench/real/references.py [model,model]     (all, or only those)
"""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from arviz_stats.base import array_stats
from pyro.infer.autoguide.initialization import init_to_median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))
import csis_dsl  # noqa: E402
import exact  # noqa: E402

WARMUP, SAMPLES = 1500, 3000


def data(name):
    return json.loads((HERE / f"{name}.json").read_text())


def nuts(model, seed, **kw):
    pyro.set_rng_seed(seed)
    # chains start at the prior median: a mixture's label-swapped mode (which the
    # priors make negligible) would otherwise trap a chain started at random
    mcmc = pyro.infer.MCMC(pyro.infer.NUTS(model, full_mass=kw.pop("full_mass", False),
                                           max_tree_depth=10,
                                           init_strategy=init_to_median),
                           num_samples=SAMPLES, warmup_steps=WARMUP, disable_progbar=True)
    mcmc.run(**kw)
    return {k: v.detach().double() for k, v in mcmc.get_samples().items()}


def two_chains(model, **kw):
    """Draws of two chains, and the worst split R-hat over every scalar quantity."""
    a, b = nuts(model, 1, **dict(kw)), nuts(model, 2, **dict(kw))
    worst = 0.0
    for k in a:
        x = torch.stack([a[k].reshape(SAMPLES, -1), b[k].reshape(SAMPLES, -1)], 0)
        for j in range(x.shape[-1]):
            r = float(array_stats.rhat(np.asarray(x[:, :, j]), chain_axis=0, draw_axis=1))
            worst = max(worst, r)
    return {k: torch.cat([a[k], b[k]], 0) for k in a}, worst


def summary(draws):
    return {k: {"mean": v.reshape(v.shape[0], -1).mean(0).tolist(),
                "sd": v.reshape(v.shape[0], -1).std(0).tolist()} for k, v in draws.items()}


def exact_summary(res):
    return {k: {"mean": m.reshape(-1).tolist(), "sd": s.reshape(-1).tolist()}
            for k, (m, s) in res.items()}


def pima():
    d = data("pima")
    m = csis_dsl.compile(HERE / "pima.ppl", args=d["args"])
    draws, rhat = two_chains(m.pyro_model, full_mass=True, observations=d["observations"])
    return summary(draws), rhat


def rats():
    d = data("rats")
    m = csis_dsl.compile(HERE / "rats.ppl", args=d["args"])
    draws, rhat = two_chains(m.pyro_model, observations=d["observations"])
    return summary(draws), rhat


def quakes():
    y = torch.tensor(data("quakes")["observations"]["y"], dtype=torch.float64)

    def model():
        w = pyro.sample("w", dist.Dirichlet(torch.ones(2, dtype=torch.float64)))
        mu = pyro.sample("mu", dist.Normal(torch.tensor([1.5, 5.5], dtype=torch.float64),
                                           1.0).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(2.0 * torch.ones(2, dtype=torch.float64))
                            .to_event(1))
        lp = torch.log(w) + dist.Normal(mu, sigma).log_prob(y[:, None])
        pyro.factor("y", torch.logsumexp(lp, -1).sum())
    draws, rhat = two_chains(model)
    lp = torch.log(draws["w"])[:, None, :] + dist.Normal(
        draws["mu"][:, None, :], draws["sigma"][:, None, :]).log_prob(y[None, :, None])
    resp = torch.softmax(lp, -1)[..., 1]                  # P(c_n = 1 | params, y)
    out = summary(draws)
    p = resp.mean(0)
    out["c"] = {"mean": p.tolist(), "sd": (p * (1 - p)).sqrt().tolist()}
    return out, rhat


def _hmm_forward(log_init, log_P, log_e):
    """log alpha (T, K) and log p(y) of one parameter draw."""
    alpha = [log_init + log_e[0]]
    for t in range(1, log_e.shape[0]):
        alpha.append(torch.logsumexp(alpha[-1][:, None] + log_P, 0) + log_e[t])
    alpha = torch.stack(alpha)
    return alpha, torch.logsumexp(alpha[-1], 0)


def coal():
    y = torch.tensor(data("coal")["observations"]["y"], dtype=torch.float64)
    stick = torch.tensor([[9.0, 1.0], [1.0, 9.0]], dtype=torch.float64)
    init = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))

    def model():
        rate = pyro.sample("rate", dist.Gamma(torch.tensor([6.0, 2.0], dtype=torch.float64),
                                              torch.tensor([2.0, 2.0], dtype=torch.float64))
                           .to_event(1))
        P = pyro.sample("P", dist.Dirichlet(stick).to_event(1))
        log_e = dist.Poisson(rate).log_prob(y[:, None])
        pyro.factor("y", _hmm_forward(init, torch.log(P), log_e)[1])
    draws, rhat = two_chains(model)
    probs = []
    for s in range(0, draws["rate"].shape[0], 10):          # forward-backward per draw
        log_P = torch.log(draws["P"][s])
        log_e = dist.Poisson(draws["rate"][s]).log_prob(y[:, None])
        alpha, _ = _hmm_forward(init, log_P, log_e)
        beta = [torch.zeros(2, dtype=torch.float64)]
        for t in range(len(y) - 1, 0, -1):
            beta.insert(0, torch.logsumexp(log_P + log_e[t] + beta[0], 1))
        post = torch.softmax(alpha + torch.stack(beta), -1)
        probs.append(post[:, 1])
    p = torch.stack(probs).mean(0)                            # P(z_t = 1 | y)
    out = summary(draws)
    out["z"] = {"mean": p.tolist(), "sd": (p * (1 - p)).sqrt().tolist()}
    return out, rhat


def _exact(name, method, fn, *keys):
    """The reference of model ``name`` by ``fn`` on the named args and observations."""
    def make():
        d = data(name)
        parts = {**d["args"], **d["observations"]}
        return {"method": method, "posterior": exact_summary(fn(*(parts[k] for k in keys)))}
    return make


EXACT = {name: _exact(name, *how) for name, how in {
    "faithful": ("exact (quadrature over sigma)", exact.faithful, "x", "y"),
    "glucose": ("exact (quadrature over sigma)", exact.glucose, "X", "y"),
    "eight_schools": ("exact (quadrature over tau)", exact.eight_schools, "y", "sigma"),
    "nile": ("exact (Kalman smoother on a grid over the two scales)", exact.nile, "y"),
    "coal_walk": ("exact (quadrature over sigma, the chain discretised on a grid of "
                  "1201 log rates)", lambda y: dict(zip(("sigma", "log_rate"), exact.counts_walk(
                      y, 0.5, (0.0, 2.0), torch.linspace(0.005, 1.0, 200, dtype=torch.float64),
                      torch.linspace(-5.0, 3.0, 1201, dtype=torch.float64)).values())), "y"),
    "radon": ("exact (quadrature over the two scales, the intercepts, their mean and the "
              "slope Gaussian given them)",
              lambda county, first_floor, y, J: {
                  ("mu_alpha" if k == "mu" else k): v for k, v in exact.varying_intercepts(
                      county, first_floor, y, J).items()},
              "county", "first_floor", "log_radon", "J"),
    "surgical": ("exact (quadrature over mu and sigma, each hospital's effect on a grid)",
                 exact.binomial_intercepts, "r", "n"),
    "newcomb": ("exact (quadrature over mu, log sigma and log nu)", exact.student_location, "y"),
    "sleep": ("exact (quadrature over sigma)", exact.sleep, "y"),
    "anscombe": ("exact (quadrature over sigma)", exact.anscombe, "x", "y"),
    "pumps": ("exact (each rate integrated out, quadrature over log alpha and log beta)",
              exact.gamma_poisson, "x", "t"),
    "dyes": ("exact (theta and the batch means integrated out, quadrature over the two "
             "log precisions)", exact.dyes, "y"),
}.items()}


NUTS = {"pima": (pima, "Pyro NUTS on the compiled model"),
        "quakes": (quakes, "Pyro NUTS, allocations summed out"),
        "coal": (coal, "Pyro NUTS, forward algorithm"),
        "rats": (rats, "Pyro NUTS on the compiled model")}


def main(only=None):
    path = HERE / "references.json"
    refs = json.loads(path.read_text()) if only and path.exists() else {}
    if only:
        for name in only:
            if name in EXACT:
                refs[name] = EXACT[name]()
                continue
            fn, how = NUTS[name]
            post, rhat = fn()
            print(f"{name}: worst split R-hat {rhat:.4f}", flush=True)
            refs[name] = {"method": f"{how}, 2 chains x {SAMPLES} draws ({WARMUP} warm-up), "
                                    f"worst split R-hat {rhat:.4f}", "posterior": post}
        path.write_text(json.dumps(refs, indent=1))
        return
    for name, make in EXACT.items():
        refs[name] = make()
    for name, (fn, how) in NUTS.items():
        t = time.time()
        post, rhat = fn()
        print(f"{name}: worst split R-hat {rhat:.4f}, {time.time() - t:.0f} s", flush=True)
        if rhat > 1.01:
            raise SystemExit(f"{name}: R-hat {rhat:.4f} > 1.01; run longer")
        refs[name] = {"method": f"{how}, 2 chains x {SAMPLES} draws ({WARMUP} warm-up), "
                                f"worst split R-hat {rhat:.4f}", "posterior": post}
    (HERE / "references.json").write_text(json.dumps(refs, indent=1))


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else None)
