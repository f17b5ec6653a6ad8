"""The network's inputs on a common scale (proposals/standardise.py): robust statistics
of prior simulations and the squash of far values, against numpy and closed forms."""
import math

import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from csis_dsl.proposals.standardise import HEAVY, KNEE, robust_statistics, squash


def _winsorised(x, q=0.01):
    x = x[np.isfinite(x)]
    lo, hi = np.quantile(x, [q, 1 - q])
    w = np.clip(x, lo, hi)
    return w.mean(), w.std(ddof=1)


def test_light_tails_get_the_plain_mean_and_sd():
    """Normal and Poisson simulations: the plain mean and sd (the winsorised ones would
    differ by a few per cent and change what training reaches for nothing)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4001, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1],
                                                                                dtype=torch.float64)
    x = torch.cat([x, torch.poisson(torch.full((4001, 1), 2.0, dtype=torch.float64),
                                    generator=g)], 1)
    centre, scale = robust_statistics(x)
    assert torch.allclose(centre, x.mean(0), rtol=1e-12, atol=1e-12)
    assert torch.allclose(scale, x.std(0), rtol=1e-12)
    # and the winsorised sd of those is within HEAVY of the plain one: they were close
    for k in range(4):
        assert x[:, k].std() <= HEAVY * _winsorised(x[:, k].numpy())[1]


def test_heavy_tails_and_non_finite_simulations_do_not_move_them():
    """Cauchy simulations with infinities and NaNs among them: the tails are heavy, so
    the statistics are the winsorised ones of the finite values, and a typical value
    stays O(1) (with the plain mean and sd it would be ~0: the sd is the tail's)."""
    torch.manual_seed(1)
    x = torch.distributions.Cauchy(3.0, 2.0).sample((20000, 1)).double()
    finite = x.clone()
    x[:50] = math.inf
    x[50:80] = -math.inf
    x[80:100] = math.nan
    centre, scale = robust_statistics(x)
    m, s = _winsorised(finite[100:, 0].numpy())
    assert math.isclose(float(centre), m, rel_tol=1e-9) and math.isclose(float(scale), s, rel_tol=1e-9)
    assert abs(float(centre) - 3.0) < 1.0 and float(scale) < 30.0
    assert float(finite.std()) > 10 * float(scale)


def test_counts_get_smooth_statistics_and_a_rare_event_its_sd():
    """Counts alike in every column get alike statistics (medians would jump between
    integers by sampling noise); a column that is almost always 0 gets the sd of its
    values; a constant the floor; a column with nothing finite 0 and 1; a Student-t(1.5)
    column (heavy) its winsorised statistics, beside a Normal column's plain ones."""
    torch.manual_seed(2)
    x = torch.distributions.Poisson(1.5).sample((5000, 20)).double()
    centre, scale = robust_statistics(x)
    assert float(centre.max() - centre.min()) < 0.15 and float(scale.max() - scale.min()) < 0.15
    x = torch.zeros(1000, 2, dtype=torch.float64)
    x[:5, 0] = 1.0                     # a rare binary event: its 99% quantile is 0
    centre, scale = robust_statistics(x)
    assert math.isclose(float(scale[0]), float(x[:, 0].std()), rel_tol=1e-9)
    assert float(scale[1]) == 1e-3      # a constant: the floor
    c, s = robust_statistics(torch.full((10, 1), math.nan, dtype=torch.float64))
    assert float(c) == 0.0 and float(s) == 1.0
    x = torch.stack([torch.distributions.StudentT(1.5).sample((20000,)),
                     torch.randn(20000)], 1).double()
    centre, scale = robust_statistics(x)
    m, s = _winsorised(x[:, 0].numpy())
    assert math.isclose(float(centre[0]), m, rel_tol=1e-9) and math.isclose(float(scale[0]), s, rel_tol=1e-9)
    assert math.isclose(float(scale[1]), float(x[:, 1].std()), rel_tol=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e30, 1e30, allow_nan=False), st.floats(-1e30, 1e30, allow_nan=False))
def test_squash_is_the_identity_within_the_knee_and_monotone_beyond(a, b):
    z = torch.tensor([a, b], dtype=torch.float64)
    out = squash(z)
    assert torch.isfinite(out).all()
    inside = z.abs() <= KNEE
    assert torch.equal(out[inside], z[inside])
    assert (out.abs() <= z.abs()).all() and (torch.sign(out) == torch.sign(z)).all()
    if a < b:
        assert out[0] <= out[1]


def test_squash_has_a_continuous_slope_and_finite_images_of_anything():
    z = torch.tensor([KNEE - 1e-6, KNEE + 1e-6], dtype=torch.float64, requires_grad=True)
    out = squash(z)
    g, = torch.autograd.grad(out.sum(), z)
    assert torch.allclose(g, torch.ones(2, dtype=torch.float64), atol=1e-5)
    assert math.isclose(float((out[1] - out[0]).detach()), 2e-6, rel_tol=1e-3)
    far = squash(torch.tensor([math.inf, -math.inf, math.nan, 1e38], dtype=torch.float32))
    assert torch.isfinite(far).all() and float(far[2]) == 0.0
    assert float(far[0]) < 100 and float(far[1]) > -100
    # a value 1e18 sds out becomes about KNEE + 41.4, not 1e18
    assert math.isclose(float(squash(torch.tensor(1e18, dtype=torch.float64))),
                        KNEE + math.log1p(1e18 - KNEE), rel_tol=1e-12)
