"""Pictures (matplotlib): posterior marginals with the prior, training curves,
importance-weight diagnostics."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .errors import OptionError  # noqa: E402


def _finish(fig, path):
    fig.tight_layout()
    if path is not None:
        from .files import atomic_write
        suffix = str(path).rsplit(".", 1)[-1].lower() if "." in str(path) else "png"
        try:
            atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=suffix),
                         "the figure")
        except ValueError as err:      # a format matplotlib does not write
            raise OptionError(f"cannot write the figure to '{path}': {err}") from None
        finally:
            plt.close(fig)
    return fig


def plot_posterior(post, path=None, names=None, prior_samples=2000, max_elements=4):
    names = names or post.latents
    panels = []
    for n in names:
        x = post.values(n)
        k = x[0].numel()
        for j in range(min(k, max_elements)):
            panels.append((n, j, k))
    sims = post.model.simulate(prior_samples)
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.6 * len(panels)), squeeze=False)
    for ax, (n, j, k) in zip(axes[:, 0], panels):
        x = post.values(n).reshape(post.num_samples, -1)[:, j]
        w = post.weights
        ok = ~torch.isnan(x)
        pr = sims[n].reshape(prior_samples, -1)[:, j].double()
        label = n if k == 1 else f"{n}[{j}]"
        if post.model.checked.vars[n].discrete:
            vals = torch.unique(torch.cat([x[ok], pr])).tolist()
            pw = [float(w[ok][x[ok] == v].sum()) for v in vals]
            pp = [float((pr == v).double().mean()) for v in vals]
            ax.bar([v - 0.2 for v in vals], pp, width=0.4, alpha=0.6, label="prior")
            ax.bar([v + 0.2 for v in vals], pw, width=0.4, alpha=0.8, label="posterior")
        else:
            ax.hist(pr.numpy(), bins=50, density=True, alpha=0.4, label="prior")
            ax.hist(x[ok].numpy(), bins=50, weights=w[ok].numpy(), density=True,
                    alpha=0.7, label=f"posterior (ESS {post.ess:.0f})")
        ax.set_title(label)
        ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_history(h, path=None):
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
    axes[0].plot(h.steps, h.loss, alpha=0.5, label="training loss")
    if h.val_steps:
        axes[0].plot(h.val_steps, h.val_loss, "o-", label="validation loss")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("-log q(latents | observations)")
    axes[0].legend()
    if h.val_ess:
        axes[1].plot(h.val_steps, h.val_ess, "o-", color="C2", label="validation ESS/N")
        if h.best_step is not None:
            axes[1].axvline(h.best_step, color="grey", ls=":", label="kept (best)")
        axes[1].legend()
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("ESS / N, held-out observation sets")
    axes[1].set_ylim(0, 1.05)
    axes[2].plot(h.steps, h.traces_per_s)
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("traces / s")
    return _finish(fig, path)


def plot_weights(post, path=None):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    w = post.weights.numpy()
    axes[0].hist(w * len(w), bins=50)
    axes[0].set_xlabel("normalised weight x N")
    axes[0].set_title(f"ESS {post.ess:.1f} of {post.num_samples}")
    axes[1].plot(sorted(w, reverse=True))
    axes[1].set_yscale("log")
    axes[1].set_xlabel("rank")
    axes[1].set_ylabel("weight")
    return _finish(fig, path)


def plot_predictive(post, draws, path=None, max_panels: int = 8):
    """Posterior predictive check: each observed variable over its predictive draws
    (a histogram for a scalar; observed and predictive frequencies for counts; the
    median and 90% band per index for a series)."""
    import numpy as np
    names = list(draws)[:max_panels]
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.8 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        sim = draws[name].double().reshape(draws[name].shape[0], -1).numpy()
        obs = post.observations[name].double().reshape(-1).numpy()
        discrete = post.model.checked.vars[name].discrete
        if sim.shape[1] == 1 and not discrete:
            ax.hist(sim[:, 0], bins=60, density=True, alpha=0.6, label="posterior predictive")
            ax.axvline(obs[0], color="k", lw=2, label=f"observed {obs[0]:.4g}")
            p = float((sim[:, 0] >= obs[0]).mean())
            ax.set_title(f"{name}: P(replicate >= observed) = {p:.3f}")
        elif discrete:
            vals = np.unique(np.concatenate([obs, sim.reshape(-1)]))
            if vals.size > 60:                  # wide counts: compare on common bins
                vals = np.unique(np.quantile(np.concatenate([obs, sim.reshape(-1)]),
                                             np.linspace(0, 1, 41)).round())
            edges = np.concatenate([vals - 0.5, [vals[-1] + 0.5]]) if vals.size <= 60 \
                else np.concatenate([vals[:-1], [vals[-1] + 1]])
            freq = np.stack([np.histogram(row, edges)[0] / row.size for row in sim])
            mid = (edges[:-1] + edges[1:]) / 2
            lo, med, hi = np.quantile(freq, [0.05, 0.5, 0.95], axis=0)
            seen = np.histogram(obs, edges)[0] / obs.size
            if mid.size <= 20:
                ax.bar(mid, med, width=0.6, alpha=0.5, label="predictive median")
                ax.errorbar(mid, med, yerr=[med - lo, hi - med], fmt="none", ecolor="C0",
                            capsize=4, label="predictive 90%")
                ax.set_xticks(mid)
            else:
                ax.fill_between(mid, lo, hi, step="mid", alpha=0.4, label="predictive 90%")
                ax.step(mid, med, where="mid", label="predictive median")
            ax.plot(mid, seen, "ko", ms=5, label="observed")
            ax.set_xlabel("value")
            ax.set_ylabel("frequency")
            ax.set_title(name)
        else:
            idx = np.arange(sim.shape[1])
            lo, med, hi = np.quantile(sim, [0.05, 0.5, 0.95], axis=0)
            ax.fill_between(idx, lo, hi, alpha=0.35, label="predictive 90%")
            ax.plot(idx, med, lw=1, label="predictive median")
            ax.plot(idx, obs, "k.", ms=4, label="observed")
            inside = float(((obs >= lo) & (obs <= hi)).mean())
            ax.set_title(f"{name}: {inside:.0%} of observations inside the 90% band")
            ax.set_xlabel("index")
        ax.legend(fontsize=7)
    return _finish(fig, path)


def plot_calibration(cal, path=None, max_elements: int = 12):
    """Simulation-based calibration: the rank ECDF minus the uniform CDF per latent
    element, for the weighted posterior and the plain proposal, inside the 95%
    simultaneous band (arviz-stats), and the expected-coverage curve."""
    import numpy as np
    from arviz_stats.ecdf_utils import ecdf_pit
    E = min(len(cal.labels), max_elements)
    cols = min(E + 1, 4)
    rows = -(-(E + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    flat = list(axes.reshape(-1))
    rng = np.random.default_rng(0)
    for j in range(E):
        ax = flat[j]
        band = None
        for c, kind in zip(("C0", "C3"), cal.ranks):
            u = cal.ranks[kind][:, j]
            u = u[~np.isnan(u)]
            if u.size < 5:
                continue
            z, ecdf, lo, hi = ecdf_pit(u, 0.95, 1000, rng=rng)
            if band is None:
                ax.fill_between(z, lo - z, hi - z, color="grey", alpha=0.25,
                                label="95% simultaneous")
                band = True
            ax.plot(z, ecdf - z, color=c, label=f"{kind} ({cal.verdict[kind]})")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(cal.labels[j], fontsize=9)
        ax.set_xlabel("normalised rank")
        if j == 0:
            ax.set_ylabel("ECDF - uniform")
            ax.legend(fontsize=6)
    ax = flat[E]
    for c, kind in zip(("C0", "C3"), cal.ranks):
        ax.plot(cal.levels, np.nanmean(cal.coverage[kind], 0), color=c, label=kind)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("credible level")
    ax.set_ylabel("coverage")
    ax.set_title("expected coverage", fontsize=9)
    ax.legend(fontsize=6)
    for ax in flat[E + 1:]:
        ax.axis("off")
    return _finish(fig, path)
