"""The runtime's traces repeated K times, to evaluate a function of them at K candidate
values in one vectorised run instead of K.

A fit that knows its objective only by values (:mod:`..proposals.quadrature`: central
differences, a line search, quadrature nodes) evaluates it at several points for each
of the M traces. Under :func:`repeated` the runtime runs K M traces, block k (rows
k M .. k M + M - 1) a copy of the M: every stored value with a row per trace is read
repeated (lazily, once per variable), values shared by all traces (data, arguments:
one row) as they are.
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager

import torch

from .values import Stored

STACK_ELEMENTS = 2 ** 22   # observation elements (rows times a row's) one repeated run
                           # may hold: a large batch takes its points in a few runs


def points_per_run(M: int, observations, names=None) -> int:
    """How many points per row (K) one repeated run of ``M`` traces may evaluate: at
    most ``STACK_ELEMENTS`` elements of the observations (``names`` of them, or all)
    in all K M rows, at least one."""
    row = sum(t[0].numel() for o, t in observations.items() if names is None or o in names)
    return max(1, STACK_ELEMENTS // max(M * row, 1))


def repeat_rows(t, K: int, M: int):
    """``t`` (M, ...) as (K M, ...), block k a copy of it; a tensor of one row (shared
    by every trace), or None, as it is."""
    if t is None or t.shape[0] != M or K == 1:
        return t
    return t.unsqueeze(0).expand((K,) + tuple(t.shape)).reshape((K * M,) + tuple(t.shape[1:]))


class RepeatedEnv(Mapping):
    """The stored values ``env`` of M traces, read as K M (:func:`repeat_rows`)."""

    def __init__(self, env, K: int, M: int):
        self.env, self.K, self.M, self.done = env, K, M, {}

    def __getitem__(self, name):
        if name not in self.done:
            st = self.env[name]
            self.done[name] = Stored(repeat_rows(st.t, self.K, self.M),
                                     repeat_rows(st.exists, self.K, self.M))
        return self.done[name]

    def __contains__(self, name):
        return name in self.env

    def __iter__(self):
        return iter(self.env)

    def __len__(self):
        return len(self.env)


@contextmanager
def repeated(rt, K: int):
    """Within: ``rt`` runs K copies of its B traces (K B, block k the copy k). Traces
    found invalid in any copy are marked invalid in ``rt`` after."""
    M = rt.B
    env, invalid = rt.env, rt.invalid
    rt.env, rt.B, rt.invalid = RepeatedEnv(env, K, M), K * M, repeat_rows(invalid, K, M)
    try:
        yield
    finally:
        marked = rt.invalid
        rt.env, rt.B = env, M
        rt.invalid = invalid | marked.reshape(K, -1).any(0) if marked.shape[0] == K * M \
            else invalid


def in_runs(rt, u: torch.Tensor, chunk: int, evaluate) -> torch.Tensor:
    """A function of ``rt``'s M traces at K points each, u (K, M, D) -> (K, M): up to
    ``chunk`` points a run, each run ``evaluate(points (k M, D), k) -> (k M,)`` with
    the traces repeated k times (:func:`repeated`); one point a run, or all of them
    where ``rt`` does not run these M traces, with ``rt`` as it is."""
    M = u.shape[1]
    if rt.B != M:
        chunk = 1
    out = []
    for c in u.split(chunk):
        K = c.shape[0]
        if K == 1:
            out.append(evaluate(c[0], 1).unsqueeze(0))
            continue
        with repeated(rt, K):
            out.append(evaluate(c.reshape(K * M, -1), K).reshape(K, M))
    return torch.cat(out)


def repeat_each(d: dict, K: int, M: int) -> dict:
    """A dict of tensors with a row per trace (M) or one row, as K M (:func:`repeat_rows`)."""
    return {k: repeat_rows(t, K, M) if torch.is_tensor(t) else t for k, t in d.items()}
