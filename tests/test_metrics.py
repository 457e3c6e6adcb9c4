"""Importance-sampled log-likelihood against the closed form of a linear-Gaussian model."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from probgen.data import TensorData
from probgen.metrics import iw_log_likelihood, iw_nll, masked_bernoulli_nll, negative_elbo

D, K, SIGMA = 5, 2, 0.5


@pytest.fixture
def ppca():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(D, K, generator=g, dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    z = torch.randn(200, K, generator=g, dtype=torch.float64)
    x = z @ W.T + mu + SIGMA * torch.randn(200, D, generator=g, dtype=torch.float64)
    cov = W @ W.T + SIGMA ** 2 * torch.eye(D, dtype=torch.float64)
    exact = dist.MultivariateNormal(mu, cov).log_prob(x)
    M = W.T @ W + SIGMA ** 2 * torch.eye(K, dtype=torch.float64)
    post_cov = SIGMA ** 2 * torch.linalg.inv(M)

    def post_mean(x):
        return torch.linalg.solve(M, W.T @ (x - mu).T).T

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(K), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, SIGMA).to_event(1), obs=x)

    def exact_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(post_mean(x), post_cov))

    def rough_guide(x):  # right mean, too wide, no correlations
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(post_mean(x), 2.0 * post_cov.diagonal().sqrt()).to_event(1))

    return x, exact, model, exact_guide, rough_guide


def test_exact_posterior_gives_exact_log_likelihood(ppca):
    x, exact, model, exact_guide, _ = ppca
    for k in (1, 7):
        est = iw_log_likelihood(model, exact_guide, x, num_samples=k)
        assert est.shape == (200,)
        assert torch.allclose(est, exact, atol=1e-9)


def test_importance_sampling_approaches_log_likelihood(ppca):
    x, exact, model, _, rough_guide = ppca
    torch.manual_seed(0)
    gaps = []
    for k in (1, 10, 100, 2000):
        est = iw_log_likelihood(model, rough_guide, x, num_samples=k, chunk_size=250)
        gaps.append((exact - est).mean().item())
    # the bound tightens with k and ends close to log p(x)
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] > -0.01
    assert gaps[0] > 0.3 and gaps[3] < 0.02


def test_elbo_is_below_log_likelihood(ppca):
    x, exact, model, _, rough_guide = ppca
    torch.manual_seed(0)
    data = TensorData(x)
    neg_elbo = negative_elbo(model, rough_guide, data, num_particles=200, batch_size=50)
    nll = iw_nll(model, rough_guide, data, num_samples=500, batch_size=50)
    true_nll = -exact.mean().item()
    assert neg_elbo > nll > true_nll - 0.01
    assert nll == pytest.approx(true_nll, abs=0.05)


def test_chunking_does_not_change_the_estimate(ppca):
    x, _, model, _, rough_guide = ppca
    torch.manual_seed(1)
    a = iw_log_likelihood(model, rough_guide, x, num_samples=12, chunk_size=12)
    b = iw_log_likelihood(model, rough_guide, x, num_samples=12, chunk_size=5)
    assert a.shape == b.shape == (200,)
    # same estimator, different draws: the means over 200 points agree closely
    assert (a.mean() - b.mean()).abs().item() < 0.03


def test_masked_bernoulli_nll_closed_form():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    targets = torch.tensor([[1.0, 0.25, 0.0]])
    mask = torch.tensor([[True, True, False]])
    p = torch.sigmoid(torch.tensor(2.0))
    expected = math.log(2) - (0.25 * torch.log(p) + 0.75 * torch.log(1 - p)).item()
    assert masked_bernoulli_nll(logits, targets, mask).item() == pytest.approx(expected, rel=1e-6)
    assert masked_bernoulli_nll(logits, targets).shape == (1,)


def test_kl_per_dimension_and_active_units_closed_form():
    from probgen.metrics import active_units, kl_per_dimension

    loc = torch.tensor([[0.0, 1.0, 0.3], [0.0, -1.0, 0.3]])
    scale = torch.tensor([[1.0, 0.5, 2.0], [1.0, 0.5, 2.0]])
    kl = kl_per_dimension(loc, scale)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                            torch.distributions.Normal(0.0, 1.0)).mean(0)
    assert torch.allclose(kl, ref)
    assert kl[0] == 0
    assert active_units(loc).tolist() == [False, True, False]


def test_psnr_and_restoration_closed_form():
    from probgen.metrics import psnr, restoration_psnr

    clean = torch.zeros(2, 1, 4, 4)
    assert torch.allclose(psnr(clean + 0.1, clean), torch.tensor([20.0, 20.0]))
    noisy = clean + 0.1
    scores = restoration_psnr(lambda x: x - 0.09, clean, noisy)
    assert scores["psnr_before"] == pytest.approx(20.0)
    assert scores["psnr_after"] == pytest.approx(40.0, rel=1e-4)
    # a hole of one pixel per image filled with 0 where the truth is 0.5; restored to 0.45
    truth = torch.zeros(2, 1, 4, 4)
    truth[:, :, 1, 2] = 0.5
    hole = torch.zeros_like(truth, dtype=torch.bool)
    hole[:, :, 1, 2] = True
    holed = torch.where(hole, torch.zeros_like(truth), truth)
    scores = restoration_psnr(lambda x: torch.where(hole, x + 0.45, x), truth, holed, hole)
    assert scores["region_mse_before"] == pytest.approx(0.25)
    assert scores["region_psnr_before"] == pytest.approx(10 * math.log10(1 / 0.25))
    assert scores["region_psnr_after"] == pytest.approx(10 * math.log10(1 / 0.0025), rel=1e-4)


def test_roc_auc_is_the_pairwise_ranking_probability():
    from probgen.metrics import roc_auc

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (300,), generator=g).float()  # many ties
    pos = torch.rand(300, generator=g) < 0.3
    s_pos, s_neg = scores[pos][:, None], scores[~pos][None, :]
    ref = ((s_pos > s_neg).double() + 0.5 * (s_pos == s_neg).double()).mean().item()
    assert roc_auc(scores, pos) == pytest.approx(ref, abs=1e-12)
    assert roc_auc(torch.arange(10.0), torch.arange(10) >= 5) == 1.0
    with pytest.raises(Exception, match="both positive and negative"):
        roc_auc(torch.arange(3.0), torch.ones(3, dtype=torch.bool))


def test_pca_recovers_a_known_covariance():
    from probgen.metrics import pca, pca_reconstruction

    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0]) + 5
    mean, comps, ratio = pca(x)
    assert torch.allclose(ratio, torch.tensor([9.0, 4.0, 1.0], dtype=ratio.dtype) / 14, atol=0.01)
    assert abs(comps[0, 0]) == pytest.approx(1.0, abs=0.01)
    assert torch.allclose(pca_reconstruction(x, mean, comps, 3), x, atol=1e-4)
    assert torch.allclose(mean.float(), torch.full((3,), 5.0), atol=0.05)


def test_elbo_per_example_ignores_the_kl_weight():
    from probgen.metrics import elbo_per_example
    from probgen.models import VAE

    torch.manual_seed(0)
    x = (torch.rand(16, 1, 28, 28) < 0.3).float()
    data = TensorData(x, torch.zeros(16, dtype=torch.long))
    vals = []
    for beta in (1.0, 4.0):
        torch.manual_seed(0)
        m = VAE(z_dim=2, hidden=(8,), beta=beta)
        torch.manual_seed(1)
        vals.append(elbo_per_example(m.model, m.guide, data, num_particles=3))
    assert vals[0].shape == (16,) and torch.allclose(vals[0], vals[1])
