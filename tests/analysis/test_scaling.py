import numpy as np
import pytest

from spectrum.errors import SpectrumError
from spectrum.analysis.heldout.scaling import PowerLaw, fit_power_law

TRUE = dict(E=1.7, A=400.0, alpha=0.34, B=300.0, beta=0.28)


def _points():
    M = np.repeat([1e5, 3e5, 1e6, 3e6, 1e7], 15)
    T = np.tile(np.logspace(5, 8, 15), 5)
    return M, T, PowerLaw(**TRUE)(M, T)


def test_recovers_planted_parameters_without_noise():
    M, T, L = _points()
    law = fit_power_law(M, T, L, x_name="T")
    for name, v in TRUE.items():
        assert getattr(law, name) == pytest.approx(v, rel=1e-4), name
    assert law.rmse < 1e-8 and law.n_points == len(L)


def test_recovers_planted_parameters_with_noise():
    M, T, L = _points()
    L = L + np.random.default_rng(0).normal(0, 0.003, L.shape)
    law = fit_power_law(M, T, L, x_name="T")
    assert law.alpha == pytest.approx(TRUE["alpha"], abs=0.01)
    assert law.beta == pytest.approx(TRUE["beta"], abs=0.01)
    assert law.E == pytest.approx(TRUE["E"], abs=0.02)


def test_fixed_parameters_and_too_few_points():
    M, T, L = _points()
    four = slice(0, 60, 15)
    with pytest.raises(SpectrumError, match="distinct"):
        fit_power_law(M[four], T[four] * 0 + 1e6 + np.arange(4), L[four], x_name="D")
    # with the exponents known, three free parameters fit four points exactly
    idx = [0, 20, 40, 74]
    law = fit_power_law(M[idx], T[idx], L[idx], x_name="D",
                        fixed={"alpha": TRUE["alpha"], "beta": TRUE["beta"]})
    assert law.fixed == {"alpha": TRUE["alpha"], "beta": TRUE["beta"]}
    np.testing.assert_allclose(law(M[idx], T[idx]), L[idx], rtol=1e-6)
    # a curve in T alone (A fixed to 0)
    one = M == 1e5
    law = fit_power_law(np.ones(one.sum()), T[one], L[one] - 400 * 1e5 ** -0.34, x_name="T",
                        fixed={"A": 0.0, "alpha": 0.0})
    assert law.beta == pytest.approx(TRUE["beta"], rel=1e-4)


def test_derivatives_match_finite_differences():
    law = PowerLaw(**TRUE)
    M, X, h = 3e6, 2e7, 1e-6
    fd_M = (law(M * np.exp(h), X) - law(M * np.exp(-h), X)) / (2 * h)
    fd_X = (law(M, X * np.exp(h)) - law(M, X * np.exp(-h))) / (2 * h)
    assert law.dlnM(M, X) == pytest.approx(fd_M, rel=1e-6)
    assert law.dlnX(M, X) == pytest.approx(fd_X, rel=1e-6)
