"""The fit loop's data checks and host syncs: data under a per-batch transform whose every
draw passes the checks when one does (``one_draw_checks``: dynamic binarization, uniform
dequantization) is checked once, on one draw, before training, so the model's per-batch
checks (a host sync each on a GPU) are skipped inside the loop; bad data is still refused
before the first update; ``evaluate`` reads its sum once per pass.

The syncs are counted with tests/test_device.py's recorder on fake CUDA tensors (its
module docstring says why that is a faithful stand-in and what it cannot see).
"""

from __future__ import annotations

import pyro
import pytest
import torch

import probgen
from probgen.data import TensorData, dynamic_binarization
from probgen.data.dequantize import uniform_dequantization
from probgen.errors import DataError
from probgen.infer.context import running_steps
from probgen.models import VAE
from probgen.train import Run, as_step, evaluate
from probgen.train.batches import check_data_once
from tests.test_device import fake_cuda


def _grey(mnist, n=64):
    x, y = mnist["train"].tensors
    return x[:n], y[:n]


def _set_up(model, data):
    """The fit loop's set-up (settings, device, data checks) without training."""
    run = Run(
        model,
        data,
        None,
        probgen.FitConfig(device="cpu", batch_size=16, progress=False, verbose=False),
    )
    run.set_up()
    return run


def _one_step_syncs(model, step, batch, checked: bool):
    """Host syncs of one training step of ``step`` on fake CUDA copies of ``model`` and
    ``batch``, in the loop's context with ``data_checked=checked``."""
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        step.phases[0].loss(batch, {})  # a real CPU step first: lazily made state
    with (
        fake_cuda(model, batch) as (_, syncs, (_, fb)),
        running_steps(data_checked=checked, module=step.declared_module),
    ):
        for phase in step.phases:
            out = phase.loss(fb, {})
            loss = out[0] if isinstance(out, tuple) else out
            assert loss.device.type == "cuda"
    return syncs.events


def test_dynamically_binarized_data_is_checked_once_and_the_vae_step_has_no_sync(mnist_small):
    x, y = _grey(mnist_small)
    data = TensorData(x, y, transform=dynamic_binarization)
    vae = VAE(z_dim=3, hidden=(16,))
    torch.manual_seed(3)
    before = torch.get_rng_state()
    run = _set_up(vae, data)
    assert run.train_checked is True
    # the check's draw came from a generator of its own: the loop's seed (drawn from the
    # global stream by set_up) is what it would be without the check
    torch.set_rng_state(before)
    expected = int(torch.randint(0, 2**62, (1,)).item())
    assert run.loader_gen.initial_seed() == expected
    batch = next(data.batches(8, generator=torch.Generator().manual_seed(1)))
    events = _one_step_syncs(vae, run.step, batch, run.train_checked)
    assert events == [], f"{len(events)} host syncs per step"
    # the recorder sees the per-batch check the loop now skips (the count before the
    # change); a fresh model, since fake_cuda made the first one's tensors fake for good
    other = VAE(z_dim=3, hidden=(16,))
    assert len(_one_step_syncs(other, as_step(other, probgen.FitConfig()), batch, False)) >= 1


def test_a_checked_draw_leaves_the_random_streams_alone(mnist_small):
    x, _ = _grey(mnist_small)
    loader = torch.Generator().manual_seed(7)
    loader_state = loader.get_state()
    torch.manual_seed(11)
    state = torch.get_rng_state()
    for transform, likelihood in (
        (dynamic_binarization, "bernoulli"),
        (uniform_dequantization(256), "continuous_bernoulli"),
    ):
        step = as_step(VAE(z_dim=3, hidden=(16,), likelihood=likelihood), probgen.FitConfig())
        state = torch.get_rng_state()
        assert check_data_once(step, TensorData(x, transform=transform)) is True
        assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(loader.get_state(), loader_state)


def _scaled(batch, generator=None):
    """A transform with one_draw_checks whose every draw is bad: pixels of 0.25 and 0.75."""
    return (dynamic_binarization(batch, generator)[0] * 0.5 + 0.25,) + tuple(batch[1:])


_scaled.one_draw_checks = True


def _unflagged(batch, generator=None):
    return tuple(batch)


@pytest.mark.parametrize("how", ["flagged", "composed", "unflagged"])
def test_bad_data_after_the_transform_is_refused_before_training(how, mnist_small):
    """Pixels outside {0, 1} after the transform: refused (the likelihood's one line)
    before any update, whether the loop checks one draw (a flagged transform, or two
    flagged ones composed) or the model checks each batch (a composition with an
    unflagged transform, which drops the flag)."""
    x, y = _grey(mnist_small)
    if how == "flagged":
        data = TensorData(x, y, transform=_scaled)
    elif how == "composed":
        data = TensorData(x, y, transform=dynamic_binarization).with_transform(_scaled)
    else:
        data = TensorData(x, y, transform=_scaled).with_transform(_unflagged)
    assert bool(getattr(data.transform, "one_draw_checks", False)) == (how != "unflagged")
    vae = VAE(z_dim=3, hidden=(16,))
    if how != "unflagged":
        with pytest.raises(DataError, match="binary pixels"):
            _set_up(vae, data)  # in set_up: before the first step
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    with pytest.raises(DataError, match="binary pixels"):
        probgen.fit(vae, data, epochs=1, batch_size=16, device="cpu", progress=False, verbose=False)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())


def test_with_transform_keeps_one_draw_checks_only_when_both_parts_have_it(mnist_small):
    x, _ = _grey(mnist_small, 8)
    dequantize = uniform_dequantization(256, check=False)
    base = TensorData(x)
    assert base.with_transform(dynamic_binarization).transform.one_draw_checks
    both = base.with_transform(dequantize).with_transform(dynamic_binarization)
    assert both.transform.one_draw_checks
    for first, second in ((dynamic_binarization, _unflagged), (_unflagged, dequantize)):
        composed = base.with_transform(first).with_transform(second)
        assert not getattr(composed.transform, "one_draw_checks", False)
        step = as_step(
            VAE(z_dim=3, hidden=(16,), likelihood="continuous_bernoulli"), probgen.FitConfig()
        )
        assert check_data_once(step, composed) is False


def test_evaluate_reads_its_sum_once_per_pass(mnist_small):
    """evaluate on fake CUDA: the whole-data check's reads and one read of the sum, the
    same count for 2 batches as for 8 (no read per batch)."""
    x, _ = _grey(mnist_small, 16)
    data = TensorData((x > 0.5).float())
    counts = []
    for batch_size in (8, 2):
        vae = VAE(z_dim=3, hidden=(16,))
        with fake_cuda(vae, data) as (_, syncs, (_, fdata)):
            evaluate(vae, fdata, batch_size=batch_size)
        counts.append(len(syncs.events))
    assert counts[0] == counts[1] and counts[0] >= 1, counts
