"""Metrics, in one place: every model and example uses these."""

from probgen.metrics.likelihood import (iw_log_likelihood, iw_nll, log_importance_weights,
                                        masked_bernoulli_nll, negative_elbo)

__all__ = ["iw_log_likelihood", "iw_nll", "log_importance_weights", "masked_bernoulli_nll",
           "negative_elbo"]
