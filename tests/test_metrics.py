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
    cov = W @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
    exact = dist.MultivariateNormal(mu, cov).log_prob(x)
    M = W.T @ W + SIGMA**2 * torch.eye(K, dtype=torch.float64)
    post_cov = SIGMA**2 * torch.linalg.inv(M)

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
            pyro.sample(
                "z", dist.Normal(post_mean(x), 2.0 * post_cov.diagonal().sqrt()).to_event(1)
            )

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
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)
    ).mean(0)
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


def _tiny_vae(beta=1.0, encoder="gaussian", seed=0):
    from probgen.models import VAE

    torch.manual_seed(seed)
    return VAE(z_dim=3, hidden=(16,), beta=beta, encoder=encoder)


def _binary_images(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).float()


def test_one_negative_elbo_for_any_beta_the_unscaled_bound():
    """negative_elbo, -mean(elbo_per_example) and the report's neg_elbo are the same number
    for a beta = 4 VAE: the beta = 1 bound computed by hand, not the weighted training loss."""
    from pyro.infer import Trace_ELBO

    from probgen.metrics import elbo_per_example
    from probgen.metrics.report import autoencoder_report

    x = _binary_images()
    data = TensorData(x)
    model = _tiny_vae(beta=4.0)
    k, n = 5, x.shape[0]
    with torch.no_grad():
        torch.manual_seed(3)
        loc, scale = model.encode(x)
        eps = torch.randn(k, n, 3)  # the draws the guide makes after the same seed
        flat = x.reshape(n, -1)
        by_hand, kl = [], []
        for j in range(k):
            z = loc + scale * eps[j]
            p = model.decode(z).reshape(n, -1).clamp(1e-7, 1 - 1e-7)
            log_px = (flat * p.log() + (1 - flat) * (1 - p).log()).sum(1)
            log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(1)
            log_qz = dist.Normal(loc, scale).log_prob(z).sum(1)
            by_hand.append(log_px + log_pz - log_qz)
            kl.append(log_qz - log_pz)
        by_hand = -torch.stack(by_hand).mean().item()
        kl = torch.stack(kl).mean().item()  # Monte Carlo KL of the same draws

    torch.manual_seed(3)
    neg = negative_elbo(model.model, model.guide, data, num_particles=k)
    torch.manual_seed(3)
    per_example = elbo_per_example(model.model, model.guide, data, num_particles=k)
    torch.manual_seed(3)
    report = autoencoder_report(model, data, elbo_particles=k)
    assert neg == pytest.approx(by_hand, rel=1e-4)
    assert -per_example.mean().item() == pytest.approx(neg, rel=1e-6)
    assert report["neg_elbo"] == pytest.approx(neg, rel=1e-6)
    # the training objective (Pyro's loss of the beta = 4 model) weights that KL by 4
    torch.manual_seed(3)
    weighted = (
        Trace_ELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1)
        .differentiable_loss(model.model, model.guide, x)
        .item()
        / n
    )
    assert kl > 0.05
    assert weighted == pytest.approx(neg + 3 * kl, rel=1e-4)


def test_importance_sampled_metrics_refuse_a_point_mass_guide():
    from probgen.errors import ConfigError
    from probgen.metrics import elbo_per_example
    from probgen.metrics.likelihood import elbo_and_iw_nll
    from probgen.metrics.report import autoencoder_report

    x = _binary_images(8)
    data = TensorData(x)
    ae = _tiny_vae(beta=0.0, encoder="delta")
    for call in (
        lambda: iw_log_likelihood(ae.model, ae.guide, x, num_samples=4),
        lambda: iw_nll(ae.model, ae.guide, data, num_samples=4),
        lambda: negative_elbo(ae.model, ae.guide, data, num_particles=2),
        lambda: elbo_per_example(ae.model, ae.guide, data),
        lambda: elbo_and_iw_nll(ae.model, ae.guide, data, 2, 4),
    ):
        with pytest.raises(ConfigError, match="point mass"):
            call()
    report = autoencoder_report(ae, data, iw_samples=4)  # the report skips them
    assert "iw_nll" not in report and "neg_elbo" not in report and report["recon_mse"] > 0


def test_particle_plate_and_repeated_arguments_give_the_same_weights(ppca):
    from probgen.metrics import log_importance_weights

    x, _, model, _, rough_guide = ppca
    out = {}
    for vectorize in (True, False):
        torch.manual_seed(2)
        out[vectorize] = log_importance_weights(
            model, rough_guide, x, num_particles=6, vectorize=vectorize
        )
    assert out[True].shape == (6, 200)
    assert torch.allclose(out[True], out[False], atol=1e-10)

    def flat_model(x):  # reshapes to the data's size: cannot broadcast over particles
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(K), 1.0).to_event(1))
            mean = z.reshape(x.shape[0], K) @ torch.ones(K, D, dtype=x.dtype)
            pyro.sample("x", dist.Normal(mean, SIGMA).to_event(1), obs=x)

    torch.manual_seed(2)
    lw = log_importance_weights(flat_model, rough_guide, x, num_particles=3)  # falls back
    assert lw.shape == (3, 200) and torch.isfinite(lw).all()
    with pytest.raises(RuntimeError):
        log_importance_weights(flat_model, rough_guide, x, num_particles=3, vectorize=True)


def test_elbo_and_iw_nll_share_one_set_of_draws(ppca):
    from probgen.metrics.likelihood import elbo_and_iw_nll

    x, exact, model, _, rough_guide = ppca
    data = TensorData(x)
    torch.manual_seed(5)
    both = elbo_and_iw_nll(
        model, rough_guide, data, elbo_particles=10, iw_samples=10, batch_size=50, chunk_size=10
    )
    torch.manual_seed(5)
    alone = negative_elbo(model, rough_guide, data, num_particles=10, batch_size=50)
    assert both["neg_elbo"] == pytest.approx(alone, rel=1e-9)
    torch.manual_seed(5)
    assert both["iw_nll"] == pytest.approx(
        iw_nll(model, rough_guide, data, num_samples=10, batch_size=50, chunk_size=10), rel=1e-9
    )
    # more draws for the NLL than for the ELBO, in chunks: the NLL is close to the truth
    torch.manual_seed(6)
    both = elbo_and_iw_nll(
        model, rough_guide, data, elbo_particles=10, iw_samples=1000, batch_size=50, chunk_size=64
    )
    true_nll = -exact.mean().item()
    assert both["iw_samples"] == 1000
    assert both["neg_elbo"] > both["iw_nll"] > true_nll - 0.01
    assert both["iw_nll"] == pytest.approx(true_nll, abs=0.05)
    torch.manual_seed(7)
    many = negative_elbo(model, rough_guide, data, num_particles=1000, batch_size=50)
    assert both["neg_elbo"] == pytest.approx(many, abs=0.5)  # 10 other draws, same bound


def _refuses_particles(err):
    """A model/guide pair whose model raises ``err`` when it sees a leading axis of draws."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            if z.dim() > 1:
                raise err
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    return model, guide


@pytest.mark.parametrize(
    "err,falls_back",
    [
        (RuntimeError("The size of tensor a (3) must match the size of tensor b (4)"), True),
        (ValueError("Shape mismatch inside plate('data')"), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
        (
            RuntimeError(
                "Expected all tensors to be on the same device, but found at least two "
                "devices, cuda:0 and cpu!"
            ),
            False,
        ),
    ],
)
def test_vectorized_pass_falls_back_only_for_a_model_that_does_not_broadcast(err, falls_back):
    """A shape error of the particle plate repeats the arguments instead; running out of
    memory or mixing devices is the machine's failure and is raised, not hidden by the
    slow path (torch.OutOfMemoryError is a RuntimeError)."""
    model, guide = _refuses_particles(err)
    x = torch.randn(4)
    if falls_back:
        assert iw_log_likelihood(model, guide, x, num_samples=3).shape == (4,)
    else:
        with pytest.raises(type(err), match=str(err)[:20]):
            iw_log_likelihood(model, guide, x, num_samples=3)


def test_neg_log_density_inverts_bits_per_dim_and_histories_convert():
    from probgen.metrics import bits_per_dim, history_in_bits_per_dim, neg_log_density

    # -log p(x) = 100 nats on 784 dims of 256 levels: bits/dim = (100 + 784 ln 256) / (784 ln 2)
    bpd = (100 + 784 * math.log(256)) / (784 * math.log(2))
    assert neg_log_density(bpd, 784) == pytest.approx(100.0)
    assert float(bits_per_dim(-neg_log_density(1.3, 10, 4), 10, 4)) == pytest.approx(1.3)
    assert neg_log_density(8.0, 784) == pytest.approx(0.0, abs=1e-9)  # 8 bits: log p = 0
    hist = [{"epoch": 0, "train_loss": 100.0, "val_loss": None, "seconds": 2.0, "lr": 0.1}]
    out = history_in_bits_per_dim(hist, 784)
    assert out == [{"epoch": 0, "train_loss": pytest.approx(bpd), "val_loss": None, "seconds": 2.0}]


def _settings_cases():
    from probgen.metrics import class_coverage, elbo_and_iw_nll, elbo_per_example, mmd
    from probgen.metrics.gaps import LocalGuide, optimise_local_guide
    from probgen.metrics.parzen import parzen_log_likelihood
    from probgen.metrics.quality import knn_radii

    def local(x):
        return LocalGuide(
            "z", lambda loc: dist.Normal(loc, 1.0).to_event(1), {"loc": x.new_zeros(x.shape[0], K)}
        )

    points = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    return [
        # (call, the message); what each did before it was checked in the comment
        (
            lambda x, m, g: iw_nll(m, g, TensorData(x), batch_size=0),  # ZeroDivisionError
            "batch_size must be at least 1, got 0.",
        ),
        (
            lambda x, m, g: elbo_and_iw_nll(m, g, TensorData(x), chunk_size=0),  # read as None
            "chunk_size must be at least 1, got 0; or None for a size that fits memory.",
        ),
        (
            lambda x, m, g: iw_nll(m, g, TensorData(x), chunk_size=-2),  # never finished
            "chunk_size must be at least 1, got -2",
        ),
        (
            lambda x, m, g: elbo_per_example(m, g, TensorData(x), num_particles=2.0),
            "num_particles must be an integer, got 2.0.",
        ),
        (
            lambda x, m, g: optimise_local_guide(m, local(x), x, steps=2, lr=-1e-2),  # Adam's
            "lr must be more than 0, got -0.01.",
        ),
        (
            lambda x, m, g: parzen_log_likelihood(x, x, sigma=float("inf")),
            "sigma (the Parzen window's width) must be a finite number (more than 0), got inf.",
        ),
        (
            lambda x, m, g: mmd(points, points, max_points=1),  # a DataError about the data
            "max_points must be at least 2, got 1; MMD needs two points of each sample.",
        ),
        (
            lambda x, m, g: knn_radii(points, k=1, chunk=0),  # range() with step 0
            "chunk must be at least 1, got 0.",
        ),
        (
            lambda x, m, g: class_coverage(points, min_share=True),  # True taken as 1
            "min_share must be a number, got True.",
        ),
    ]


@pytest.mark.parametrize("case", range(len(_settings_cases())))
def test_a_bad_setting_is_one_config_error_before_any_draw(case, ppca):
    """Each metric's settings refused in the checks' words (probgen.checks), before the model
    runs: a count that divided by zero, looped forever or was read as another value."""
    from probgen.errors import ConfigError

    call, message = _settings_cases()[case]
    x = ppca[0]

    def never(*args, **kwargs):
        raise AssertionError("the model ran")

    with pytest.raises(ConfigError) as info:
        call(x[:20], never, never)
    assert str(info.value).startswith(message)
