"""Metrics, in one place: every model and example uses these."""

from probgen.metrics.density import (
    bits_per_dim,
    history_in_bits_per_dim,
    mean_bits_per_dim,
    nats_to_bits_per_dim,
    neg_log_density,
)
from probgen.metrics.images import (
    mse_per_image,
    pca,
    pca_reconstruction,
    psnr,
    restoration_psnr,
    roc_auc,
)
from probgen.metrics.latent import active_units, collect_codes, kl_per_dimension
from probgen.metrics.likelihood import (
    elbo_and_iw_nll,
    elbo_per_example,
    iw_log_likelihood,
    iw_nll,
    log_importance_weights,
    masked_bernoulli_nll,
    negative_elbo,
)
from probgen.metrics.parzen import mmd, parzen_log_likelihood, parzen_score
from probgen.metrics.quality import (
    FID_NAME,
    KID_NAME,
    QualityReference,
    class_coverage,
    fid,
    mnist_reference,
    precision_recall,
    reference_statistics,
    sample_quality,
)

__all__ = [
    "FID_NAME",
    "KID_NAME",
    "QualityReference",
    "active_units",
    "bits_per_dim",
    "class_coverage",
    "collect_codes",
    "elbo_and_iw_nll",
    "elbo_per_example",
    "fid",
    "history_in_bits_per_dim",
    "iw_log_likelihood",
    "iw_nll",
    "kl_per_dimension",
    "log_importance_weights",
    "masked_bernoulli_nll",
    "mean_bits_per_dim",
    "mmd",
    "mnist_reference",
    "mse_per_image",
    "nats_to_bits_per_dim",
    "neg_log_density",
    "negative_elbo",
    "parzen_log_likelihood",
    "parzen_score",
    "pca",
    "pca_reconstruction",
    "precision_recall",
    "psnr",
    "reference_statistics",
    "restoration_psnr",
    "roc_auc",
    "sample_quality",
]
