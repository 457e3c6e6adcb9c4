"""probgen.inspect: InferenceData groups, dims and shapes from guides and MCMC; values
checked against direct computations; ArviZ's tools on a VAE; clear errors."""

import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoNormal

from probgen.errors import ConfigError
from probgen.infer.mcmc import Chains, run_nuts, vae_nuts
from probgen.inspect import arviz, from_draws, from_guide, from_mcmc, from_vae
from probgen.models.vae import VAE

az = arviz()


def images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).float()


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return VAE(z_dim=3, hidden=(16,))


def regression(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ w, sigma), obs=y)


def regression_data(n=20):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g)
    return x, x @ torch.tensor([1.0, -1.0]) + 0.3 * torch.randn(n, generator=g)


def test_vae_guide_groups_dims_and_shapes(vae):
    x = images()
    idata = from_vae(vae, x, num_samples=50, index=[10, 11, 12, 13])
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
    }
    assert idata.posterior["z"].dims == ("chain", "draw", "example", "latent")
    assert idata.posterior["z"].shape == (1, 50, 4, 3)
    assert list(idata.posterior["example"].values) == [10, 11, 12, 13]
    assert idata.posterior_predictive["x"].shape == (1, 50, 4, 784)
    assert idata.posterior_predictive["x"].dims == ("chain", "draw", "example", "pixel")
    assert set(np.unique(idata.posterior_predictive["x"].values)) <= {0.0, 1.0}
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "example")
    assert idata.observed_data["x"].dims == ("example", "pixel")
    np.testing.assert_array_equal(idata.observed_data["x"].values, x.reshape(4, -1).numpy())
    assert "mean" not in idata.posterior and "mean" not in idata.observed_data


def test_pointwise_log_likelihood_is_the_decoders_density_of_each_image(vae):
    x = images()
    idata = from_vae(vae, x, num_samples=6)
    z = torch.as_tensor(idata.posterior["z"].values[0])  # (6, 4, 3)
    logits = vae.decoder(z)
    expected = dist.Bernoulli(logits=logits).log_prob(x.reshape(4, -1)).sum(-1)
    np.testing.assert_allclose(
        idata.log_likelihood["x"].values[0], expected.detach().numpy(), rtol=1e-5
    )
    # one draw at a time gives the same numbers
    draws = {"z": z.unsqueeze(0)}
    one = from_draws(vae.model, draws, x, None, parallel=False, posterior_predictive=False)
    np.testing.assert_allclose(
        one.log_likelihood["x"].values, idata.log_likelihood["x"].values, rtol=1e-5
    )


def test_flow_guide_converts_too():
    torch.manual_seed(0)
    model = VAE(z_dim=3, hidden=(16,), guide_flow="iaf")
    idata = from_vae(model, images(3), num_samples=20)
    assert idata.posterior["z"].shape == (1, 20, 3, 3)


def test_user_model_with_an_autoguide_names_axes_after_plates():
    x, y = regression_data()
    guide = AutoNormal(regression)
    with pyro.get_param_store().scope():
        idata = from_guide(regression, guide, x, y, num_samples=40)
    assert set(idata.posterior.data_vars) == {"w", "sigma"}
    assert idata.posterior["w"].dims == ("chain", "draw", "w_dim_0")
    assert idata.posterior["sigma"].shape == (1, 40)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert idata.log_likelihood["y"].shape == (1, 40, 20)
    assert idata.posterior_predictive["y"].shape == (1, 40, 20)
    # pointwise log-likelihood equals Normal(x w, sigma).log_prob(y) per draw and point
    w = torch.as_tensor(idata.posterior["w"].values[0])
    s = torch.as_tensor(idata.posterior["sigma"].values[0])
    ref = dist.Normal(w @ x.T, s[:, None]).log_prob(y)
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], ref.numpy(), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:num_chains=2 is more than available_cpu")
def test_pyro_mcmc_with_chains():
    x, y = regression_data()
    torch.manual_seed(0)
    mcmc = MCMC(
        NUTS(regression), num_samples=15, warmup_steps=15, num_chains=2, disable_progbar=True
    )
    mcmc.run(x, y)
    idata = from_mcmc(mcmc)
    assert idata.posterior["w"].shape == (2, 15, 2)
    assert idata.log_likelihood["y"].shape == (2, 15, 20)
    assert idata.observed_data["y"].shape == (20,)


def test_probgen_chains_on_a_vae_carry_divergences(vae):
    x = images(2)
    torch.manual_seed(0)
    chains = vae_nuts(vae, x, num_chains=2, num_samples=20, warmup_steps=20)
    assert isinstance(chains, Chains) and chains.samples["z"].shape == (2, 20, 2, 3)
    assert all(p.requires_grad for p in vae.parameters()) and vae.training
    idata = from_vae(vae, x, mcmc=chains)
    assert idata.posterior["z"].dims == ("chain", "draw", "example", "latent")
    assert idata.sample_stats["diverging"].shape == (2, 20)
    assert idata.log_likelihood["x"].shape == (2, 20, 2)
    summary = az.summary(idata, var_names=["z"])
    assert list(summary.columns[-3:]) == ["ess_bulk", "ess_tail", "r_hat"] and len(summary) == 6


def test_arviz_tools_work_on_a_vae(vae):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idata = from_vae(vae, images(), num_samples=40)
    assert len(az.summary(idata, var_names=["z"], kind="stats")) == 12
    az.plot_posterior(idata, var_names=["z"], coords={"example": [0]})
    az.plot_pair(idata, var_names=["z"], coords={"example": [0]})
    az.plot_ppc(idata, num_pp_samples=5, coords={"example": [0]})
    with pytest.warns(UserWarning):  # per-image latents: LOO leaves out a latent with its image
        loo = az.loo(idata, pointwise=True)
    assert loo.pareto_k.shape == (4,)
    plt.close("all")


def test_an_mcmc_object_without_samples_is_a_one_line_error():
    _x, _y = regression_data()
    mcmc = MCMC(NUTS(regression), num_samples=5, warmup_steps=5)
    with pytest.raises(ConfigError, match=r"no samples: call mcmc\.run") as err:
        from_mcmc(mcmc)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="Pyro MCMC or probgen Chains"):
        from_mcmc({"w": torch.zeros(2, 3)})


def test_a_guide_without_latent_sites_is_a_one_line_error():
    x, y = regression_data()

    def empty_guide(x, y=None):
        pyro.param("unused", torch.zeros(()))

    with pytest.raises(ConfigError, match="no latent sample sites") as err:
        from_guide(regression, empty_guide, x, y)
    assert "\n" not in str(err.value)


def test_bad_draws_are_clear_errors(vae):
    x = images(2)
    with pytest.raises(ConfigError, match="grouped by chain"):
        from_draws(vae.model, {"z": torch.zeros(3)}, x)
    with pytest.raises(ConfigError, match="does not sample"):
        from_draws(vae.model, {"w": torch.zeros(1, 3, 2)}, x)
    with pytest.raises(ConfigError, match="same chains and draws"):
        from_draws(vae.model, {"z": torch.zeros(1, 3, 2, 3), "x": torch.zeros(2, 3, 2, 784)}, x)
    with pytest.raises(ConfigError, match="not latent sites"):
        from_vae(vae, x, num_samples=3, sites=["x"])
    with pytest.raises(ConfigError, match="num_samples"):
        from_vae(vae, x, num_samples=0)
    with pytest.raises(ConfigError, match="index names 3 examples for 2"):
        from_vae(vae, x, num_samples=3, index=[1, 2, 3])
    with pytest.raises(ConfigError, match="num_chains"):
        run_nuts(regression, *regression_data(), num_chains=0)


@pytest.mark.parametrize("where", ["draws", "pointwise"])
@pytest.mark.parametrize(
    "err,falls_back",
    [
        (RuntimeError("The size of tensor a (5) must match the size of tensor b (3)"), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    ],
)
def test_parallel_draws_fall_back_only_for_a_model_that_does_not_broadcast(err, falls_back, where):
    """from_guide's vectorized draws (``draws``: Predictive's pass) and pointwise
    log-likelihood (``pointwise``) fall back to one draw at a time for a model that does
    not broadcast; out of memory is raised, not hidden by the slow path."""
    vectorized = []

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        if z.dim() > 0:
            vectorized.append(1)
            if (len(vectorized) == 1) == (where == "draws"):
                raise err
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    x = torch.randn(3)
    if falls_back:
        idata = from_guide(model, guide, x, num_samples=5)
        assert idata.posterior["z"].shape == (1, 5)
        assert idata.log_likelihood["x"].shape[:2] == (1, 5)
    else:
        with pytest.raises(torch.OutOfMemoryError):
            from_guide(model, guide, x, num_samples=5)
