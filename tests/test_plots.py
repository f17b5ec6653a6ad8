"""Pictures: posterior marginals with the prior, the training curve and the
importance-weight diagnostics are real images with the content they claim."""
import pytest

import csis_dsl
from conftest import SPECS


@pytest.fixture(scope="module")
def trained():
    m = csis_dsl.compile(SPECS / "outlier.ppl")
    m.train(num_steps=40, batch_size=64, seed=0, progress=False, validation_size=64,
            validate_every=10)
    return m, m.infer({"y": 12.0}, num_samples=500, seed=0)


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    return data


def test_posterior_plot(trained, tmp_path):
    m, post = trained
    fig = post.plot(tmp_path / "post.png")
    _png(tmp_path / "post.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["mu", "is_outlier"]
    # continuous: prior and posterior histograms; discrete: prior and posterior bars
    mu_ax, flag_ax = fig.axes
    assert [t.get_text() for t in mu_ax.get_legend().get_texts()][0] == "prior"
    assert len(flag_ax.patches) == 4      # two values x (prior, posterior)
    heights = [p.get_height() for p in flag_ax.patches]
    assert abs(sum(heights[2:]) - 1.0) < 1e-6 and abs(sum(heights[:2]) - 1.0) < 0.05


def test_history_plot(trained, tmp_path):
    m, _ = trained
    fig = m.history.plot(tmp_path / "hist.png")
    _png(tmp_path / "hist.png")
    loss_ax, ess_ax, tps_ax = fig.axes[:3]
    lines = loss_ax.get_lines()
    assert len(lines[0].get_xdata()) == 40 and len(lines[1].get_xdata()) == 4
    ess = ess_ax.get_lines()[0].get_ydata()
    assert len(ess) == 4 and all(0 <= e <= 1 for e in ess)
    assert list(ess) == m.history.val_ess
    assert tps_ax.get_ylabel() == "traces / s"


def test_weights_plot(trained, tmp_path):
    _, post = trained
    fig = post.plot_weights(tmp_path / "w.png")
    _png(tmp_path / "w.png")
    assert f"ESS {post.ess:.1f} of 500" == fig.axes[0].get_title()
