"""Cumulative demand from per-period quantiles: the quantile function, its inverse, the fitted dependence and the
copula's sums against their closed forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtri

from bi_pipeline.decisions.demand import (
    LEVELS,
    QCOLS,
    Dependence,
    fit_dependence,
    pit,
    quantile_values,
    window_quantiles,
)

NORMAL = 100.0 + 10.0 * ndtri(LEVELS)  # N(100, 10²)'s P10 … P90


def test_the_quantile_function_passes_through_the_quantiles_and_continues_with_normal_tails():
    q = np.tile(NORMAL, (len(LEVELS), 1))
    assert quantile_values(q, LEVELS) == pytest.approx(NORMAL)
    # Beyond P90 and below P10 the tails are the normal's that the outer quantiles imply.
    tails = quantile_values(NORMAL[None], np.array([0.01, 0.99]))
    assert tails == pytest.approx(100.0 + 10.0 * ndtri(np.array([0.01, 0.99])))
    # Floored: a measure that cannot be negative never gets a negative value.
    low = quantile_values((NORMAL - 105.0)[None], np.array([0.001, 0.05, 0.5]), floor=True)
    assert (low >= 0).all() and low[-1] == 0.0


def test_pit_inverts_the_quantile_function_and_splits_ties():
    u = np.random.default_rng(0).uniform(0.001, 0.999, 2000)
    q = np.tile(NORMAL, (len(u), 1))
    assert pit(q, quantile_values(q, u)) == pytest.approx(u, abs=1e-9)
    # Zero demand under a forecast whose P10…P50 are 0: the middle of [0, 0.5] for a floored measure.
    zeros = np.array([[0, 0, 0, 0, 0, 1, 2, 3, 4.0]])
    assert pit(zeros, np.array([0.0]), floor=True)[0] == pytest.approx(0.25)
    # Two equal inner quantiles: the middle of their levels.
    flat = np.array([[1, 2, 3, 3, 3, 4, 5, 6, 7.0]])
    assert pit(flat, np.array([3.0]))[0] == pytest.approx(0.4)


def test_the_dependence_is_recovered_from_simulated_errors():
    true = Dependence((0.6, 0.36, 0.22, 0.13, 0.08))
    rng = np.random.default_rng(1)
    series, steps = 600, 6
    z = rng.standard_normal((series, steps)) @ np.linalg.cholesky(true.matrix(steps)).T
    rows = pd.DataFrame(
        {
            "store_id": np.repeat(np.arange(series) % 20, steps).astype(str),
            "item_id": np.repeat(np.arange(series), steps).astype(str),
            "origin": "2024-01-01",
            "step": np.tile(np.arange(1, steps + 1), series),
            "sales": (100.0 + 10.0 * z).ravel(),
        }
    )
    rows[QCOLS] = NORMAL
    fitted = fit_dependence(rows)
    assert len(fitted.lags) == steps - 1
    assert np.asarray(fitted.lags) == pytest.approx(true.lags, abs=0.06)
    assert fitted.pairs == tuple(series * (steps - k) for k in range(1, steps))
    assert Dependence.from_dict(fitted.to_dict()).lags == pytest.approx(fitted.lags, abs=1e-4)


def test_the_correlation_matrix_is_positive_definite_with_a_unit_diagonal():
    for dependence in (Dependence(), Dependence((0.9, -0.5)), Dependence((0.3,))):
        matrix = dependence.matrix(8)
        assert np.diag(matrix) == pytest.approx(np.ones(8))
        assert np.linalg.eigvalsh(matrix).min() > 0
    # No errors fitted: every step moves with every other (the sum's quantile is the sum of the quantiles).
    assert Dependence().matrix(3) == pytest.approx(np.ones((3, 3)), abs=1e-5)


@pytest.mark.parametrize("rho", [0.0, 0.5, 1.0])
def test_window_sums_have_the_closed_form_quantiles_of_correlated_normals(rho):
    quantiles = np.tile(NORMAL, (2, 5, 1))
    levels = np.array([0.1, 0.5, 0.9])
    window = window_quantiles(quantiles, 3, levels, Dependence((rho, rho)), draws=40_000, seed=3)
    # Three steps of N(100, 10²), pairwise correlation rho: N(300, 100 (3 + 6 rho)).
    expected = 300.0 + 10.0 * np.sqrt(3 + 6 * rho) * ndtri(levels)
    assert window[0, 0] == pytest.approx(expected, rel=0.01)
    # Windows that run past the last step sum the steps there are: the last is one step alone.
    assert window[1, 4] == pytest.approx(NORMAL[[0, 4, 8]], rel=0.01)


def test_levels_can_differ_per_series():
    quantiles = np.tile(NORMAL, (2, 2, 1))
    levels = np.array([[0.5, 0.9], [0.5, 0.95]])
    window = window_quantiles(quantiles, 1, levels, Dependence(), draws=40_000)
    assert window[0, 0] == pytest.approx([100.0, 100.0 + 10.0 * ndtri(0.9)], rel=0.005)
    assert window[1, 0] == pytest.approx([100.0, 100.0 + 10.0 * ndtri(0.95)], rel=0.005)
