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
