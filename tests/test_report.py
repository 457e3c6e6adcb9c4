"""probgen.metrics.report's adversarial-autoencoder report on a tiny model whose numbers are
known by hand and on a VAE, the models' autoencoder interface, class_error and seeded."""

import pytest
import torch
from torch import nn

from probgen.errors import ConfigError
from probgen.metrics.parzen import mmd, parzen_score
from probgen.metrics.report import Autoencoder, aae_report, as_autoencoder, class_error, seeded
from probgen.models import AAE, VAE


class Halver(nn.Module):
    """A tiny autoencoder with a prior whose every figure is known: codes are the flat
    images, reconstructions are half the image, the reconstruction loss is 3.0 per image,
    the prior is N(0, I) and a sample is a prior draw reshaped to an image."""

    z_dim, num_labels, label_to_decoder = 4, 0, False

    def __init__(self, predict=False, labels_to_decoder=False):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.corrupt = "noise"
        self.seen_corrupt = []
        if labels_to_decoder:
            self.num_labels, self.label_to_decoder = 3, True
        if predict:
            self.predict = lambda x: (x.flatten(1).sum(1) > 2).long()

    @property
    def device(self):
        return self.w.device

    def codes(self, x):
        self.seen_corrupt.append(self.corrupt)
        return x.flatten(1)

    def prior_sample(self, n, labels=None):
        return torch.randn(n, self.z_dim)

    def decode(self, z, labels=None):
        return z.reshape(-1, 1, 2, 2)

    def reconstruct(self, x, labels=None):
        return 0.5 * x

    def reconstruction_loss(self, batch):
        return torch.tensor(3.0)

    def sample(self, n=None, labels=None):
        if labels is not None:
            return labels.float()[:, None, None, None].expand(-1, 1, 2, 2).clone()
        return self.decode(self.prior_sample(n))


def _data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 2, 2, generator=g)
    return x, (x.flatten(1).sum(1) > 2).long()


def test_aae_report_against_a_hand_computation():
    model = Halver(predict=True)
    assert isinstance(model, Autoencoder)
    x, y = _data()
    y[:6] = 1 - y[:6]  # 6 of 60 wrong: 10% error
    val, _ = _data(30, seed=1)
    state = torch.get_rng_state()
    rep = aae_report(model, (x, y), val, parzen_samples=50, parzen_val=20, seed=4, batch_size=25)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream left alone
    m = rep.metrics
    # reconstruction: (x/2 - x)^2 = x^2 / 4 per pixel, over every batch of 25, 25 and 10
    assert m["recon_mse"] == pytest.approx(float((x**2 / 4).mean()), rel=1e-6)
    assert m["recon_nll"] == pytest.approx(3.0)
    assert m["test_error"] == pytest.approx(10.0)
    # the draws follow the seed: the prior draws, then the sample grid, then Parzen's
    with seeded(4):
        prior = torch.randn(60, 4)
        grid = torch.randn(100, 4)
        parzen = torch.randn(50, 4)
    assert torch.equal(rep.codes, x.flatten(1)) and torch.equal(rep.prior_draws, prior)
    assert torch.equal(rep.samples, grid.reshape(100, 1, 2, 2))
    assert rep.labels is y and rep.prior_labels is None
    match = mmd(x.flatten(1), prior)
    assert m["mmd2"] == pytest.approx(match["mmd2"]) and m["mmd_points"] == 60
    p = parzen_score(parzen, x.flatten(1), val[:20].flatten(1))
    assert m["parzen_ll"] == pytest.approx(p["log_likelihood"])
    assert m["parzen_samples"] == 50 and m["parzen_sigma"] == p["sigma"]
    assert "fid" not in m  # no scorer
    # scored on clean images, the corruption given back; the same numbers again
    assert set(model.seen_corrupt) == {None} and model.corrupt == "noise"
    again = aae_report(
        model, (x, y), val, parzen_samples=50, parzen_val=20, seed=4, batch_size=25
    ).metrics
    assert {k: v for k, v in again.items() if not k.endswith("seconds")} == {
        k: v for k, v in m.items() if not k.endswith("seconds")
    }


def test_aae_report_labels_a_conditional_decoders_samples_and_scores_them():
    model = Halver(labels_to_decoder=True)
    x, y = _data(30)
    y = y % 3

    class Scorer:
        def report(self, samples):
            self.samples = samples
            return {
                "fid": 1.5,
                "fid_name": "F",
                "kid_mean": 0.1,
                "kid_std": 0.0,
                "kid_name": "K",
                "kid_subset_size": 5,
                "num_samples": len(samples),
                "num_reference": 9,
            }

    scorer = Scorer()
    rep = aae_report(
        model, (x, y), x, parzen_samples=0, scorer=scorer, fid_samples=40, seed=2, grid=30
    )
    assert rep.prior_labels is y and "parzen_ll" not in rep.metrics
    # the grid: ten of each of the three labels in turn
    assert rep.samples[:, 0, 0, 0].tolist() == [0.0] * 10 + [1.0] * 10 + [2.0] * 10
    # FID samples: uniform labels from the report's own generator, clamped to [0, 1]
    labels = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(scorer.samples[:, 0, 0, 0], labels.float().clamp(0, 1))
    assert rep.metrics["fid"] == 1.5 and rep.metrics["quality_samples"] == 40


def test_the_models_autoencoders_are_read_as_they_are():
    """The report reads the models' own interface (probgen.models.autoencoder): a VAE, a
    label-conditional VAE and an AAE as they are; a model without it is refused."""
    from probgen.models import autoencoder

    assert Autoencoder is autoencoder.Autoencoder
    torch.manual_seed(0)
    for model in (
        VAE(z_dim=3, hidden=(8,)),
        VAE(z_dim=2, hidden=(8,), num_labels=10),
        AAE(z_dim=2, hidden=(8,), d_hidden=(8,)),
    ):
        assert as_autoencoder(model) is model
    with pytest.raises(
        ConfigError,
        match=r"^Linear is no autoencoder with a prior: it lacks "
        r"codes, prior_sample, decode, reconstruct",
    ):
        as_autoencoder(nn.Linear(2, 2))


def test_aae_report_of_a_vae_scores_its_own_reconstructions():
    torch.manual_seed(0)
    vae = VAE(z_dim=2, hidden=(8,))
    x = (torch.rand(30, 1, 28, 28) > 0.5).float()
    y = torch.arange(30) % 10
    rep = aae_report(vae, (x, y), x, parzen_samples=0, fid_samples=0, grid=10, batch_size=7)
    with torch.no_grad():
        mse = (vae.reconstruct(x).reshape(30, -1) - x.reshape(30, -1)).pow(2).mean()
    assert rep.metrics["recon_mse"] == pytest.approx(float(mse), rel=1e-5)
    assert rep.codes.shape == (30, 2) and rep.samples.shape[0] == 10
    assert "parzen_ll" not in rep.metrics and "fid" not in rep.metrics


def test_class_error_in_eval_mode_with_the_mode_given_back():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.modes = []

        def predict(self, x):
            self.modes.append(self.training)
            return x.long()

    net = Net().train()
    err = class_error(net, torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([0, 1, 0, 0]))
    assert err == pytest.approx(50.0) and net.modes == [False] and net.training


def test_seeded_forks_the_random_state():
    torch.manual_seed(9)
    before = torch.get_rng_state()
    with seeded(7):
        a = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)
    with seeded(7, "cpu"):
        assert torch.equal(torch.rand(3), a)


# --------------------------------------------------------------------------- likelihood, scenes


class ExactPair:
    """z ~ N(0, 1), x ~ N(z, 1) per example, with the exact posterior N(x/2, 1/2) as guide:
    the ELBO and the importance-weighted bound both equal log p(x) = log N(x; 0, 2) for
    every draw."""

    def model(self, x):
        import pyro
        import pyro.distributions as dist

        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        import pyro
        import pyro.distributions as dist

        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))


def test_likelihood_report_against_the_closed_form():
    from probgen.data import TensorData
    from probgen.metrics.report import likelihood_report

    x = torch.linspace(-3, 3, 12, dtype=torch.float64)
    nll = -torch.distributions.Normal(0.0, 2**0.5).log_prob(x)
    groups = torch.tensor([1, 2, 3] * 4)
    state = torch.get_rng_state()
    out = likelihood_report(
        ExactPair(),
        TensorData(x),
        elbo_particles=3,
        iw_samples=5,
        iw_size=8,
        groups=groups,
        batch_size=5,
        iw_batch_size=3,
    )
    assert torch.equal(torch.get_rng_state(), state)
    assert out["neg_elbo"] == pytest.approx(float(nll.mean()), rel=1e-6)
    assert out["iw_nll"] == pytest.approx(float(nll[:8].mean()), rel=1e-6)
    assert out["neg_elbo_iw_subset"] == pytest.approx(float(nll[:8].mean()), rel=1e-6)
    assert out["neg_elbo_by_group"] == pytest.approx(
        {g: float(nll[groups == g].mean()) for g in (1, 2, 3)}, rel=1e-6
    )
    assert set(likelihood_report(ExactPair(), TensorData(x))) == {"neg_elbo"}


def test_decomposition_report_against_a_hand_count():
    from probgen.data import TensorData
    from probgen.metrics.segmentation import decomposition_report

    # three scenes of 4x4 pixels: two objects, one object, two objects
    seg = torch.zeros(3, 4, 4, dtype=torch.long)
    seg[0, :2], seg[0, 2:] = 1, 2
    seg[1, 1:3, 1:3] = 1
    seg[2, :, :2], seg[2, :, 2:] = 1, 2
    counts = torch.tensor([2, 1, 2])

    def decompose(x):
        """Scene i's entities: the true objects exactly (scene 2: both in one entity)."""
        idx = x.flatten().long()
        ink = torch.zeros(len(idx), 2, 4, 4)
        for b, i in enumerate(idx.tolist()):
            for k in range(2):
                ink[b, k] = 30.0 * (seg[i] == k + 1)
            if i == 2:
                ink[b, 0], ink[b, 1] = 30.0 * (seg[i] > 0), 0.0
        return {"ink": ink}

    out = decomposition_report(
        decompose, TensorData(torch.arange(3.0)[:, None]), seg, counts, min_ink=20.0, batch_size=2
    )
    # ARI 1, 1 and 0 (one entity over two objects); active entities 2, 1, 1
    assert out["ari"] == pytest.approx(2 / 3)
    assert out["count_accuracy"] == pytest.approx(2 / 3)
    assert out["by_count"] == [
        {"digits": 1, "scenes": 1, "ari": 1.0, "count_accuracy": 1.0, "mean_active": 1.0},
        {
            "digits": 2,
            "scenes": 2,
            "ari": pytest.approx(0.5),
            "count_accuracy": 0.5,
            "mean_active": 1.5,
        },
    ]


def test_edit_report_against_a_hand_computation():
    from probgen.metrics.report import edit_report

    # two identities at three levels: level t adds 0.1 t to every pixel of identity i's image
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 1, 16, 16, generator=g) * 0.5
    truth = torch.stack([base + 0.1 * t for t in range(3)], 1)  # (2, 3, 1, 16, 16)

    def features(x):
        return x.flatten(1)

    def level_net(x):  # finds the level from the mean brightness above the identity's
        shift = (x.flatten(1).mean(1) - base.flatten(1).mean(1)) / 0.1
        return -(shift[:, None] - torch.arange(3.0)).abs()

    perfect = edit_report(lambda x, s: truth.clone(), truth, features, level_net)
    assert perfect["rec_mse"] == 0 and perfect["rec_feature"] == 0 and perfect["target_mse"] == 0
    assert perfect["identity"] == 1.0 and perfect["attribute_acc"] == 1.0
    assert perfect["target_ssim"] == pytest.approx(1.0)
    # no change: the input at every level; MSE to the truth (0.1 |t - s|)^2 over the six
    # pairs s != t: four at distance 1, two at distance 2
    same = edit_report(
        lambda x, s: x[:, None].expand(-1, 3, -1, -1, -1), truth, features, level_net
    )
    assert same["target_mse"] == pytest.approx((4 * 0.01 + 2 * 0.04) / 6, rel=1e-5)
    assert same["target_mse_forward"] == pytest.approx((2 * 0.01 + 0.04) / 3, rel=1e-5)
    assert same["attribute_acc"] == 0.0 and same["rec_mse"] == 0

    # forward only: NaN below the input's level; the pairs t < s are left out
    def forward(x, s):
        out = torch.full_like(truth, float("nan"))
        out[:, s:] = truth[:, s:]
        return out

    fwd = edit_report(forward, truth, features, level_net)
    assert fwd["target_mse"] == 0 and fwd["target_mse_forward"] == 0 and fwd["identity"] == 1

    def stay(x, s):  # reconstructs, goes nowhere else
        out = torch.full_like(truth, float("nan"))
        out[:, s] = x
        return out

    nowhere = edit_report(stay, truth, features, level_net)
    assert nowhere["rec_mse"] == 0
    assert nowhere["target_mse"] != nowhere["target_mse"]  # NaN: no pair has it
