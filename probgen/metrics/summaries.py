"""One-line summaries of the reports of :mod:`probgen.metrics.report`, for a log or a
script's progress output (the numbers themselves stay in the report's ``metrics``).

:func:`probgen.metrics.quality.report_line` is the same for a sample-quality report.
"""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["aae_line"]


def aae_line(metrics: Dict[str, Any]) -> str:
    """One line of what :func:`probgen.metrics.report.aae_report` measured: the
    reconstruction's mean squared error, the MMD^2 of the codes and the prior, and where
    measured the Parzen-window log-likelihood (with its standard error and width), FID and
    KID, and a semi-supervised model's test error.

    Args:
        metrics: an :class:`~probgen.metrics.report.AAEReport`'s ``metrics`` (or a record
            holding them).

    Returns:
        The line, without a trailing full stop.

    Examples:
        >>> from probgen.metrics.summaries import aae_line
        >>> aae_line({"recon_mse": 0.0312, "mmd2": 0.00412, "parzen_ll": 301.24,
        ...           "parzen_std_error": 1.93, "parzen_sigma": 0.2,
        ...           "test_error": 7.81})  # doctest: +NORMALIZE_WHITESPACE
        'recon MSE 0.0312, MMD^2(q(z), p(z)) 0.0041, Parzen LL 301.2 +- 1.9
        (sigma 0.200), test error 7.81%'
    """
    parts = [f"recon MSE {metrics['recon_mse']:.4f}",
             f"MMD^2(q(z), p(z)) {metrics['mmd2']:.4f}"]
    if "parzen_ll" in metrics:
        parts.append(f"Parzen LL {metrics['parzen_ll']:.1f} +- "
                     f"{metrics['parzen_std_error']:.1f} (sigma {metrics['parzen_sigma']:.3f})")
    if "fid" in metrics:
        parts.append(f"FID {metrics['fid']:.2f}, KID {metrics['kid_mean']:.4f}")
    if "test_error" in metrics:
        parts.append(f"test error {metrics['test_error']:.2f}%")
    return ", ".join(parts)
