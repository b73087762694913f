"""Group statistics: agreement between acquired and synthetic PET, and the EDSS regression (thesis 003 §4.3.4-6).

Pure DataFrame → DataFrame functions on statsmodels and scipy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

#: Covariates of the EDSS model (thesis 003 §4.3.6: age, gender and T2-w lesion load).
EDSS_COVARIATES = ("age", "sex_female", "t2_lesion_load_mm3")
BLAND_ALTMAN_COLUMNS = ("source", "quantity", "n", "bias", "sd", "lower", "upper", "t", "p_ttest", "p_wilcoxon")
REGRESSION_COLUMNS = ("source", "index", "n", "coef", "se", "t", "p", "beta_std")


def bland_altman(acquired: pd.Series, synthetic: pd.Series) -> dict[str, float]:
    """Bland-Altman agreement of paired measurements (Bland & Altman, Lancet 1986), with paired tests.

    ``bias`` is the mean of ``synthetic − acquired``; ``sd`` the sample SD of the differences (ddof=1); the 95 %
    limits of agreement are ``bias ± 1.96 sd``. ``t``/``p_ttest`` is the paired t-test (scipy ``ttest_rel``) and
    ``p_wilcoxon`` the Wilcoxon signed-rank test of the same pairs (both two-sided). Pairs with a missing value are
    left out; with fewer than 2 pairs every statistic but ``n`` and ``bias`` is NaN.
    """
    pairs = pd.DataFrame({"a": acquired, "s": synthetic}).dropna()
    n = len(pairs)
    difference = (pairs["s"] - pairs["a"]).to_numpy(dtype=float)
    bias = float(difference.mean()) if n else float("nan")
    result = {"n": n, "bias": bias, "sd": np.nan, "lower": np.nan, "upper": np.nan, "t": np.nan,
              "p_ttest": np.nan, "p_wilcoxon": np.nan}
    if n < 2:
        return result
    sd = float(difference.std(ddof=1))
    result.update(sd=sd, lower=bias - 1.96 * sd, upper=bias + 1.96 * sd)
    if sd > 0:
        test = stats.ttest_rel(pairs["s"], pairs["a"])
        result.update(t=float(test.statistic), p_ttest=float(test.pvalue))
    if np.any(difference != 0):
        result["p_wilcoxon"] = float(stats.wilcoxon(difference).pvalue)
    return result


def bland_altman_table(points: pd.DataFrame) -> pd.DataFrame:
    """``bland_altman.tsv`` from long-format pairs (``source quantity acquired synthetic``): one row per group."""
    rows = [
        {"source": source, "quantity": quantity, **bland_altman(group["acquired"], group["synthetic"])}
        for (source, quantity), group in points.groupby(["source", "quantity"], sort=True)
    ]
    return pd.DataFrame(rows, columns=list(BLAND_ALTMAN_COLUMNS))


def edss_regression(data: pd.DataFrame, index: str, *, covariates: Sequence[str] = EDSS_COVARIATES,
                    response: str = "edss") -> dict[str, float]:
    """Multiple linear regression ``EDSS ~ index + covariates`` by ordinary least squares (thesis 003 §4.3.6).

    Parameters
    ----------
    data
        One row per patient with ``response``, ``index`` and the covariates (sex coded ``sex_female`` = 1 for a
        woman, 0 for a man). Rows with a missing value are left out.
    index
        The explanatory index (a column of ``myelin_indices.tsv``).

    Returns
    -------
    dict
        ``n``, and for the index term the OLS ``coef``, ``se``, ``t``, two-sided ``p`` (statsmodels), and
        ``beta_std``: the index's coefficient when the response and every regressor are z-scored (the standardized
        beta of thesis Table 4.3). A covariate that does not vary is dropped; NaN everywhere when fewer patients than
        parameters + 1 remain or the index does not vary.
    """
    columns = [response, index, *covariates]
    frame = data[columns].apply(pd.to_numeric, errors="coerce").dropna()
    usable = [c for c in covariates if frame[c].std(ddof=1) > 0]
    n = len(frame)
    empty = {"n": n, "coef": np.nan, "se": np.nan, "t": np.nan, "p": np.nan, "beta_std": np.nan}
    if n < len(usable) + 3 or not frame[index].std(ddof=1) > 0:
        return empty
    regressors = frame[[index, *usable]]
    fit = sm.OLS(frame[response], sm.add_constant(regressors)).fit()
    z = (frame - frame.mean()) / frame.std(ddof=1)
    standardized = sm.OLS(z[response], sm.add_constant(z[[index, *usable]])).fit()
    return {"n": n, "coef": float(fit.params[index]), "se": float(fit.bse[index]), "t": float(fit.tvalues[index]),
            "p": float(fit.pvalues[index]), "beta_std": float(standardized.params[index])}


def regression_table(indices: pd.DataFrame, clinical: pd.DataFrame, index_names: Sequence[str]) -> pd.DataFrame:
    """``edss_regression.tsv``: :func:`edss_regression` per source and index.

    ``indices`` is ``myelin_indices.tsv``; ``clinical`` has ``participant_id``, ``edss`` (baseline), ``age``,
    ``sex_female`` and ``t2_lesion_load_mm3``.
    """
    rows = []
    for source, table in indices.groupby("source", sort=False):
        merged = table.merge(clinical, on="participant_id", how="inner")
        rows += [{"source": source, "index": name, **edss_regression(merged, name)} for name in index_names]
    return pd.DataFrame(rows, columns=list(REGRESSION_COLUMNS))
