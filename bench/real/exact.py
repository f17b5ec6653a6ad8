"""Exact posteriors of the real models, by quadrature over the few parameters
that are not conditionally Gaussian (independent of csis_dsl: plain torch, float64).

Each function returns {name: (posterior mean, posterior sd)} with tensors of the
variable's shape.
"""
import math

import torch

T64 = torch.float64


def _trapezoid_weights(grid):
    w = torch.zeros_like(grid)
    d = grid[1:] - grid[:-1]
    w[1:] += d / 2
    w[:-1] += d / 2
    return w


def _normalise(logp, w):
    lw = logp + torch.log(w)
    return torch.softmax(lw.reshape(-1), 0).reshape(lw.shape)


def regression(X, y, prior_sd, sigma_scale, s_grid):
    """y = X beta + N(0, s^2); beta ~ N(0, prior_sd^2 I); s ~ HalfNormal(sigma_scale).
    Given s, beta is Gaussian; s by quadrature on ``s_grid``. Returns the posterior
    (mean, sd) of beta (K,) and of s."""
    X, y = torch.as_tensor(X, dtype=T64), torch.as_tensor(y, dtype=T64)
    n, k = X.shape
    s = s_grid
    XtX, Xty, yty = X.T @ X, X.T @ y, y @ y
    prec = XtX / s[:, None, None] ** 2 + torch.eye(k, dtype=T64) / prior_sd ** 2
    V = torch.linalg.inv(prec)
    m = (V @ Xty) / s[:, None] ** 2
    logdet_V = torch.logdet(V)
    quad = yty / s ** 2 - torch.einsum("gi,gij,gj->g", m, prec, m)
    loglik = -n * torch.log(s) - 0.5 * quad + 0.5 * logdet_V - k * math.log(prior_sd)
    logprior = -0.5 * (s / sigma_scale) ** 2
    w = _normalise(loglik + logprior, _trapezoid_weights(s))
    mean = (w[:, None] * m).sum(0)
    second = (w[:, None, None] * (V + m[:, :, None] * m[:, None, :])).sum(0)
    sd = (second.diagonal() - mean ** 2).sqrt()
    ms = (w * s).sum()
    return (mean, sd), (ms, ((w * s ** 2).sum() - ms ** 2).sqrt())


def line(x, y, prior_sd, sigma_scale, s_grid):
    """y = a + b x + N(0, s^2); a, b ~ N(0, prior_sd^2); s ~ HalfNormal(sigma_scale)."""
    x = torch.as_tensor(x, dtype=T64)
    X = torch.stack([torch.ones(len(x), dtype=T64), x], 1)
    (mean, sd), sigma = regression(X, y, prior_sd, sigma_scale, s_grid)
    return {"intercept": (mean[0], sd[0]), "slope": (mean[1], sd[1]), "sigma": sigma}


def faithful(x, y, prior_sd=1000.0, sigma_scale=100.0):
    return line(x, y, prior_sd, sigma_scale, torch.linspace(1.0, 30.0, 6001, dtype=T64))


def sleep(y, prior_sd=10.0, sigma_scale=5.0):
    """y ~ N(mu, s^2): mu ~ N(0, prior_sd^2), s ~ HalfNormal(sigma_scale)."""
    X = torch.ones(len(y), 1, dtype=T64)
    (mean, sd), sigma = regression(X, y, prior_sd, sigma_scale,
                                   torch.linspace(0.01, 12.0, 12001, dtype=T64))
    return {"mu": (mean[0], sd[0]), "sigma": sigma}


def anscombe(x, y, prior_sd=100.0, sigma_scale=10.0):
    return line(x, y, prior_sd, sigma_scale, torch.linspace(0.01, 15.0, 15001, dtype=T64))


def glucose(X, y, prior_sd=100.0, sigma_scale=50.0):
    """The brief's regression form: beta (K,) ~ N(0, prior_sd^2), sigma ~
    HalfNormal(sigma_scale), y ~ N(X beta, sigma^2)."""
    beta, sigma = regression(X, y, prior_sd, sigma_scale,
                             torch.linspace(15.0, 45.0, 6001, dtype=T64))
    return {"beta": beta, "sigma": sigma}


def eight_schools(y, sigma, mu_sd=5.0, tau_scale=5.0):
    """mu ~ N(0, mu_sd^2), tau ~ HalfCauchy(tau_scale), theta_j ~ N(mu, tau^2),
    y_j ~ N(theta_j, sigma_j^2): quadrature over tau, the rest Gaussian."""
    y, sig = torch.as_tensor(y, dtype=T64), torch.as_tensor(sigma, dtype=T64)
    tau = torch.cat([torch.linspace(1e-4, 40.0, 20001, dtype=T64)[:-1],
                     torch.logspace(math.log10(40.0), 4.0, 4001, dtype=T64)])
    v = sig ** 2 + tau[:, None] ** 2                              # (G, J)
    cov = torch.diag_embed(v) + mu_sd ** 2
    loglik = torch.distributions.MultivariateNormal(torch.zeros(len(y), dtype=T64),
                                                    cov).log_prob(y)
    logprior = -torch.log1p((tau / tau_scale) ** 2)
    w = _normalise(loglik + logprior, _trapezoid_weights(tau))
    prec_mu = 1 / mu_sd ** 2 + (1 / v).sum(1)
    m_mu = (y / v).sum(1) / prec_mu
    v_mu = 1 / prec_mu
    c = (1 / tau[:, None] ** 2) / (1 / sig ** 2 + 1 / tau[:, None] ** 2)   # shrinkage
    v_th = 1 / (1 / sig ** 2 + 1 / tau[:, None] ** 2)
    m_th = (1 - c) * y + c * m_mu[:, None]
    var_th = v_th + c ** 2 * v_mu[:, None]

    def moments(m, var):
        wm = w.reshape((-1,) + (1,) * (m.dim() - 1))
        mean = (wm * m).sum(0)
        return mean, ((wm * (var + m ** 2)).sum(0) - mean ** 2).sqrt()
    mt = (w * tau).sum()
    return {"mu": moments(m_mu, v_mu), "theta": moments(m_th, var_th),
            "tau": (mt, ((w * tau ** 2).sum() - mt ** 2).sqrt())}


def varying_intercepts(group, x, y, J, sd_scales=(1.0, 1.0), mu_sd=10.0, beta_sd=10.0,
                       grid=160, chunk=20):
    """y_i = alpha[group_i] + beta x_i + N(0, s_y^2); alpha_j ~ N(mu, s_a^2); mu ~
    N(0, mu_sd^2), beta ~ N(0, beta_sd^2); s_y, s_a ~ HalfNormal(sd_scales). Given the two
    scales, theta = (alpha, mu, beta) is Gaussian (its marginal likelihood in closed
    form); the scales by quadrature on a 2-D grid placed around the posterior's mass
    (first a coarse pass, then the grid over where it found it)."""
    g = torch.as_tensor(group, dtype=torch.long)
    x, y = torch.as_tensor(x, dtype=T64), torch.as_tensor(y, dtype=T64)
    n, K = len(y), J + 2
    A = torch.zeros(n, K, dtype=T64)
    A[torch.arange(n), g] = 1.0
    A[:, J + 1] = x
    AtA, Aty, yty = A.T @ A, A.T @ y, y @ y

    def conditional(sy, sa):
        """Per grid point: log p(y | scales), posterior mean (G, K), covariance."""
        P0 = torch.zeros(len(sy), K, K, dtype=T64)
        ia = 1 / sa ** 2
        idx = torch.arange(J)
        P0[:, idx, idx] = ia[:, None]
        P0[:, idx, J] = P0[:, J, idx] = -ia[:, None]
        P0[:, J, J] = J * ia + 1 / mu_sd ** 2
        P0[:, J + 1, J + 1] = 1 / beta_sd ** 2
        P = P0 + AtA / sy[:, None, None] ** 2
        L = torch.linalg.cholesky(P)
        m = torch.cholesky_solve((Aty / sy[:, None] ** 2).unsqueeze(-1), L).squeeze(-1)
        # log |P0| = J log(1/sa^2) + log(1/mu_sd^2) + log(1/beta_sd^2) (a block form)
        logdet0 = J * torch.log(ia) - 2 * math.log(mu_sd) - 2 * math.log(beta_sd)
        logdet = 2 * torch.log(L.diagonal(dim1=-2, dim2=-1)).sum(-1)
        quad = yty / sy ** 2 - torch.einsum("gi,gi->g", m, Aty / sy[:, None] ** 2)
        ll = -n * torch.log(sy) - 0.5 * quad + 0.5 * (logdet0 - logdet)
        return ll, m, torch.cholesky_inverse(L)

    def on(sy_grid, sa_grid):
        SY, SA = torch.meshgrid(sy_grid, sa_grid, indexing="ij")
        sy, sa = SY.reshape(-1), SA.reshape(-1)
        parts = [conditional(sy[i:i + chunk], sa[i:i + chunk]) for i in range(0, len(sy), chunk)]
        ll = torch.cat([p[0] for p in parts])
        logprior = -0.5 * (sy / sd_scales[0]) ** 2 - 0.5 * (sa / sd_scales[1]) ** 2
        w = (_trapezoid_weights(sy_grid)[:, None] * _trapezoid_weights(sa_grid)[None, :]).reshape(-1)
        return sy, sa, _normalise(ll + logprior, w), parts

    sy, sa, w, _ = on(torch.linspace(0.01, 3.0, 60, dtype=T64), torch.linspace(0.005, 3.0, 60, dtype=T64))

    def span(v):
        m = (w * v).sum()
        s = ((w * v ** 2).sum() - m ** 2).sqrt()
        return torch.linspace(max(float(m - 8 * s), 1e-4), float(m + 8 * s), grid, dtype=T64)
    sy, sa, w, parts = on(span(sy), span(sa))
    m = torch.cat([p[1] for p in parts])
    V = torch.cat([p[2].diagonal(dim1=-2, dim2=-1) for p in parts])
    mean = (w[:, None] * m).sum(0)
    sd = ((w[:, None] * (V + m ** 2)).sum(0) - mean ** 2).sqrt()

    def scalar(v):
        mv = (w * v).sum()
        return mv, ((w * v ** 2).sum() - mv ** 2).sqrt()
    return {"alpha": (mean[:J], sd[:J]), "mu": (mean[J], sd[J]), "beta": (mean[J + 1], sd[J + 1]),
            "sigma_y": scalar(sy), "sigma_alpha": scalar(sa)}


def binomial_intercepts(r, n, mu_sd=10.0, sigma_scale=2.0, mu_grid=None, s_grid=None,
                        b_grid=None):
    """r_i ~ Binomial(n_i, sigmoid(b_i)), b_i ~ N(mu, s^2), mu ~ N(0, mu_sd^2), s ~
    HalfNormal(sigma_scale): given (mu, s) the groups are independent, each b_i
    integrated on a grid; (mu, s) by quadrature on a 2-D grid."""
    r, n = torch.as_tensor(r, dtype=T64), torch.as_tensor(n, dtype=T64)
    mu = mu_grid if mu_grid is not None else torch.linspace(-5.0, 0.0, 201, dtype=T64)
    s = s_grid if s_grid is not None else torch.linspace(0.005, 2.5, 200, dtype=T64)
    b = b_grid if b_grid is not None else torch.linspace(-8.0, 2.0, 1001, dtype=T64)
    # log p(r_i | b) (N, G_b), with the binomial coefficient (a constant) left out
    lik = r[:, None] * torch.nn.functional.logsigmoid(b) + \
        (n - r)[:, None] * torch.nn.functional.logsigmoid(-b)
    wb = torch.log(_trapezoid_weights(b))
    logN = -0.5 * ((b[None, None, :] - mu[:, None, None]) / s[None, :, None]) ** 2 \
        - torch.log(s)[None, :, None] - 0.5 * math.log(2 * math.pi)        # (Gm, Gs, Gb)
    joint = logN.unsqueeze(2) + lik[None, None] + wb                     # (Gm, Gs, N, Gb)
    per = torch.logsumexp(joint, -1)                                      # (Gm, Gs, N)
    logpost = per.sum(-1) - 0.5 * (mu[:, None] / mu_sd) ** 2 - 0.5 * (s[None, :] / sigma_scale) ** 2
    w = _normalise(logpost, _trapezoid_weights(mu)[:, None] * _trapezoid_weights(s)[None, :])
    cond = torch.softmax(joint, -1)                                       # p(b_i | mu, s, r)
    pb = (w[:, :, None, None] * cond).sum((0, 1))                         # (N, Gb)
    mb = (pb * b).sum(-1)

    def moments(v, wt):
        m = (wt * v).sum()
        return m, ((wt * v ** 2).sum() - m ** 2).sqrt()
    return {"mu": moments(mu, w.sum(1)), "sigma": moments(s, w.sum(0)),
            "b": (mb, ((pb * b ** 2).sum(-1) - mb ** 2).sqrt())}


def nile(y, level0=(1000.0, 300.0), level_scale=100.0, obs_scale=200.0):
    """Local level model: a 2-D grid over (sigma_level, sigma_obs), a Kalman filter
    and RTS smoother at every grid point (vectorised)."""
    y = torch.as_tensor(y, dtype=T64)
    sl = torch.linspace(0.5, 160.0, 320, dtype=T64)
    so = torch.linspace(40.0, 220.0, 360, dtype=T64)
    SL, SO = torch.meshgrid(sl, so, indexing="ij")
    q, r = SL.reshape(-1) ** 2, SO.reshape(-1) ** 2
    G, T = q.shape[0], len(y)
    m, P = torch.full((G,), level0[0], dtype=T64), torch.full((G,), level0[1] ** 2, dtype=T64)
    loglik = torch.zeros(G, dtype=T64)
    fm, fP, pm, pP = [], [], [], []
    for t in range(T):
        if t > 0:
            P = P + q
        pm.append(m)
        pP.append(P)
        S = P + r
        loglik += -0.5 * (torch.log(2 * math.pi * S) + (y[t] - m) ** 2 / S)
        K = P / S
        m = m + K * (y[t] - m)
        P = (1 - K) * P
        fm.append(m)
        fP.append(P)
    sm, sP = [fm[-1]], [fP[-1]]
    for t in range(T - 2, -1, -1):          # Rauch-Tung-Striebel
        J = fP[t] / pP[t + 1]
        sm.insert(0, fm[t] + J * (sm[0] - pm[t + 1]))
        sP.insert(0, fP[t] + J ** 2 * (sP[0] - pP[t + 1]))
    sm, sP = torch.stack(sm, 1), torch.stack(sP, 1)              # (G, T)
    logprior = -0.5 * (SL.reshape(-1) / level_scale) ** 2 - 0.5 * (SO.reshape(-1) / obs_scale) ** 2
    wgrid = (_trapezoid_weights(sl)[:, None] * _trapezoid_weights(so)[None, :]).reshape(-1)
    w = _normalise(loglik + logprior, wgrid)
    lm = (w[:, None] * sm).sum(0)
    lsd = ((w[:, None] * (sP + sm ** 2)).sum(0) - lm ** 2).sqrt()

    def scalar(x):
        mx = (w * x).sum()
        return mx, ((w * x ** 2).sum() - mx ** 2).sqrt()
    return {"sigma_level": scalar(SL.reshape(-1)), "sigma_obs": scalar(SO.reshape(-1)),
            "level": (lm, lsd)}


def counts_walk(y, scale_sd=0.5, x0=(0.0, 2.0), s_grid=None, x_grid=None, chunk=8):
    """A Gaussian random walk of log rates x observed through Poisson counts y[t] ~
    Poisson(exp(x[t])), x[0] ~ N(x0), x[t] ~ N(x[t - 1], s), s ~ HalfNormal(scale_sd):
    quadrature over s, and for each s the scaled forward-backward algorithm over a fine
    grid of x (the chain discretised; the transition kernel a matrix). Returns the
    posterior (mean, sd) of s and of x (T,)."""
    y = torch.as_tensor(y, dtype=T64)
    s_grid = torch.linspace(0.01, 2.0, 200, dtype=T64) if s_grid is None else s_grid
    x_grid = torch.linspace(-6.0, 4.0, 801, dtype=T64) if x_grid is None else x_grid
    dx = x_grid[1] - x_grid[0]
    T, G = len(y), len(x_grid)
    # each count's likelihood on the grid, scaled per step (the scales cancel)
    ll = torch.distributions.Poisson(x_grid.exp()).log_prob(y[:, None])     # (T, G)
    lik = (ll - ll.amax(1, keepdim=True)).exp()
    first = torch.distributions.Normal(*x0).log_prob(x_grid).exp() * dx
    log_z, marginals = [], []
    for s in s_grid.split(chunk):
        K = torch.distributions.Normal(x_grid[:, None], s[:, None, None]).log_prob(x_grid).exp() * dx
        a = first * lik[0]                                                  # (S, G)
        a = a.expand(len(s), G)
        c = [a.sum(-1)]
        alpha = [a / c[0][:, None]]
        for t in range(1, T):
            a = (alpha[-1].unsqueeze(1) @ K).squeeze(1) * lik[t]
            c.append(a.sum(-1))
            alpha.append(a / c[-1][:, None])
        beta = [torch.ones_like(a)]
        for t in range(T - 1, 0, -1):
            b = (K @ (lik[t] * beta[0]).unsqueeze(-1)).squeeze(-1) / c[t][:, None]
            beta.insert(0, b)
        log_z.append(torch.stack(c, -1).log().sum(-1))
        p = torch.stack([al * be for al, be in zip(alpha, beta)], 1)        # (S, T, G)
        marginals.append(p / p.sum(-1, keepdim=True))
    logprior = -0.5 * (s_grid / scale_sd) ** 2
    w = _normalise(torch.cat(log_z) + logprior, _trapezoid_weights(s_grid))
    px = (w[:, None, None] * torch.cat(marginals)).sum(0)                   # (T, G)
    mx = (px * x_grid).sum(-1)
    sx = ((px * x_grid ** 2).sum(-1) - mx ** 2).sqrt()
    ms = (w * s_grid).sum()
    return {"s": (ms, ((w * s_grid ** 2).sum() - ms ** 2).sqrt()), "x": (mx, sx)}


def student_location(y, mu_sd=50.0, sigma_scale=20.0, nu_shape=2.0, nu_rate=0.1,
                     mu_grid=None, log_s_grid=None, log_nu_grid=None):
    """y_i ~ StudentT(nu, mu, s); mu ~ N(0, mu_sd^2), s ~ HalfNormal(sigma_scale), nu ~
    Gamma(nu_shape, nu_rate): quadrature over (mu, log s, log nu) on a 3-D grid (in
    chunks of mu)."""
    y = torch.as_tensor(y, dtype=T64)
    mu = mu_grid if mu_grid is not None else torch.linspace(20.0, 35.0, 301, dtype=T64)
    ls = log_s_grid if log_s_grid is not None else torch.linspace(0.0, 3.0, 151, dtype=T64)
    ln = log_nu_grid if log_nu_grid is not None else torch.linspace(-2.0, 6.0, 161, dtype=T64)
    s, nu = ls.exp(), ln.exp()
    rows = []
    for part in mu.split(20):
        lik = torch.distributions.StudentT(nu[None, None, :, None], part[:, None, None, None],
                                           s[None, :, None, None]).log_prob(y).sum(-1)
        rows.append(lik)
    logp = torch.cat(rows) \
        + torch.distributions.Normal(0.0, mu_sd).log_prob(mu)[:, None, None] \
        + (torch.distributions.HalfNormal(sigma_scale).log_prob(s) + ls)[None, :, None] \
        + (torch.distributions.Gamma(nu_shape, nu_rate).log_prob(nu) + ln)[None, None, :]
    w = _normalise(logp, _trapezoid_weights(mu)[:, None, None]
                   * _trapezoid_weights(ls)[None, :, None] * _trapezoid_weights(ln)[None, None, :])

    def moments(v, wt):
        m = (wt * v).sum()
        return m, ((wt * v ** 2).sum() - m ** 2).sqrt()
    return {"mu": moments(mu, w.sum((1, 2))), "sigma": moments(s, w.sum((0, 2))),
            "nu": moments(nu, w.sum((0, 1)))}


def gamma_poisson(x, t, alpha_rate=1.0, beta_shape=0.1, beta_rate=1.0, log_a_grid=None,
                  log_b_grid=None):
    """x_i ~ Poisson(theta_i t_i), theta_i ~ Gamma(alpha, beta), alpha ~ Exponential(
    alpha_rate), beta ~ Gamma(beta_shape, beta_rate): each theta_i integrated out exactly
    (a negative binomial), quadrature over (log alpha, log beta); theta_i's posterior
    given them is Gamma(alpha + x_i, beta + t_i), averaged over the grid."""
    x, t = torch.as_tensor(x, dtype=T64), torch.as_tensor(t, dtype=T64)
    la = log_a_grid if log_a_grid is not None else torch.linspace(-7.0, 3.0, 1201, dtype=T64)
    lb = log_b_grid if log_b_grid is not None else torch.linspace(-9.0, 4.0, 1201, dtype=T64)
    a, b = la.exp()[:, None, None], lb.exp()[None, :, None]
    loglik = (a * b.log() - torch.lgamma(a) + torch.lgamma(a + x)
              - (a + x) * (b + t).log()).sum(-1)
    logp = loglik + (torch.distributions.Exponential(alpha_rate).log_prob(la.exp()) + la)[:, None] \
        + (torch.distributions.Gamma(beta_shape, beta_rate).log_prob(lb.exp()) + lb)[None, :]
    w = _normalise(logp, _trapezoid_weights(la)[:, None] * _trapezoid_weights(lb)[None, :])

    def moments(v, wt):
        m = (wt * v).sum()
        return m, ((wt * v ** 2).sum() - m ** 2).sqrt()
    mean_t = (a + x) / (b + t)                                   # (A, B, N)
    m = (w[..., None] * mean_t).sum((0, 1))
    second = (w[..., None] * (mean_t / (b + t) + mean_t ** 2)).sum((0, 1))
    return {"alpha": moments(la.exp(), w.sum(1)), "beta": moments(lb.exp(), w.sum(0)),
            "theta": (m, (second - m ** 2).sqrt())}


def dyes(y, theta_sd=1e5, shape=0.001, rate=0.001, log_w_grid=None, log_b_grid=None):
    """y[i, j] ~ Normal(mu_i, 1 / sqrt(tau_w)), mu_i ~ Normal(theta, 1 / sqrt(tau_b)),
    theta ~ Normal(0, theta_sd), tau_w and tau_b ~ Gamma(shape, rate) (BUGS's dyes, its
    vague priors): theta and every mu_i integrated out exactly given the precisions
    (Gaussian), quadrature over (log tau_w, log tau_b) -- wide enough for the long
    shelf of log tau_b that the Gamma(0.001, 0.001) prior leaves towards sigma_b = 0."""
    y = torch.as_tensor(y, dtype=T64)
    B, S = y.shape
    ybar = y.mean(1)
    ss = ((y - ybar[:, None]) ** 2).sum()
    lw = log_w_grid if log_w_grid is not None else torch.linspace(-20.0, 5.0, 801, dtype=T64)
    lb = log_b_grid if log_b_grid is not None else torch.linspace(-25.0, 25.0, 1601, dtype=T64)
    LW, LB = torch.meshgrid(lw, lb, indexing="ij")
    tw, tb = LW.exp(), LB.exp()
    # the within-batch sum of squares, and each batch mean ~ N(theta, 1/tb + 1/(S tw))
    v = 1 / tb + 1 / (S * tw)
    prec = B / v + 1 / theta_sd ** 2
    mean_t = (ybar.sum() / v) / prec
    logp = (0.5 * (S - 1) * B * LW - 0.5 * tw * ss - 0.5 * B * torch.log(v)
            - 0.5 * ((ybar ** 2).sum() / v - prec * mean_t ** 2) - 0.5 * torch.log(prec))
    prior = torch.distributions.Gamma(torch.tensor(shape, dtype=T64), torch.tensor(rate, dtype=T64))
    logp = logp + prior.log_prob(tw) + LW + prior.log_prob(tb) + LB
    w = _normalise(logp, _trapezoid_weights(lw)[:, None] * _trapezoid_weights(lb)[None, :])

    def moments(v, wt):
        m = (wt * v).sum()
        return m, ((wt * v ** 2).sum() - m ** 2).sqrt()
    # mu_i given the precisions: the shrinkage of its batch mean towards theta
    k = (S * tw / (S * tw + tb))[..., None]                                  # (W, B', 1)
    m_mu = k * ybar + (1 - k) * mean_t[..., None]
    v_mu = 1 / (S * tw + tb)[..., None] + (1 - k) ** 2 / prec[..., None]
    mu = (w[..., None] * m_mu).sum((0, 1))
    mu2 = (w[..., None] * (v_mu + m_mu ** 2)).sum((0, 1))
    theta = (w * mean_t).sum()
    theta2 = (w * (1 / prec + mean_t ** 2)).sum()
    return {"theta": (theta.reshape(1), (theta2 - theta ** 2).sqrt().reshape(1)),
            "tau_within": tuple(t.reshape(1) for t in moments(tw, w)),
            "tau_between": tuple(t.reshape(1) for t in moments(tb, w)),
            "mu": (mu, (mu2 - mu ** 2).sqrt())}
