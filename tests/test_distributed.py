"""torchrun data parallelism: 2 gloo processes on the CPU against one process."""

import os
import subprocess
import sys

import torch

from tests import ddp_worker
from tests.conftest import ROOT


def test_two_processes_equal_one_process_on_the_combined_batches(tmp_path):
    out, ckpt = tmp_path / "ddp.pt", tmp_path / "ddp_ckpt.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(ROOT / "tests" / "ddp_worker.py"),
            str(out),
            str(ckpt),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out)
    assert got["world_size"] == 2
    both, one, none = got["grads"]
    assert torch.equal(both, torch.full((3,), 1.5)) and torch.equal(one, torch.full((3,), 2.0))
    assert none is None  # no process had a gradient: the optimizer skips it, as alone
    single = ddp_worker.net()
    res = ddp_worker.run(single, batch_size=32)  # the two processes' batches together
    for p, q in zip(single.parameters(), got["params"]):
        assert torch.allclose(p.detach(), q, atol=1e-6), (p, q)
    # validation losses are reduced over both processes' halves of the validation set
    assert torch.allclose(torch.tensor(res.val_loss), torch.tensor(got["val_loss"]), atol=1e-6)
    assert torch.allclose(torch.tensor(res.train_loss), torch.tensor(got["train_loss"]), atol=1e-6)
    # a 2-process run killed after one epoch and resumed ends where the uninterrupted one did
    for p, q in zip(got["params"], got["resumed"]):
        assert torch.equal(p, q)
    # and the parameters did move (the comparison is not between untouched inits)
    assert not torch.equal(got["params"][0], ddp_worker.net()[0].weight.detach())


def test_an_example_trains_under_torchrun_and_rank_0_alone_writes(tmp_path):
    from probgen.train import load_checkpoint

    out = tmp_path / "vae"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "examples" / "vae.py"),
        "--smoke",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Test set") == 1  # rank 1 trains but does not report
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert (out / "results.json").exists() and (out / "samples.png").exists()


def test_the_group_probgen_opened_closes_at_exit_after_every_process_arrives(monkeypatch):
    """_close_group (registered at exit by fit's set-up): with gloo, a barrier first, so
    that no process closes its connections while another still talks to it, then
    destroy; no barrier after an uncaught exception or under NCCL; destroy always."""
    import torch.distributed as dist

    from probgen.train import distributed

    calls = []
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))

    def barrier():
        calls.append("barrier")
        if fail_barrier:
            raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(dist, "barrier", barrier)
    monkeypatch.delattr(sys, "last_value", raising=False)
    for backend, fail_barrier, crashed, want in (
        ("gloo", False, False, ["barrier", "destroy"]),
        ("gloo", True, False, ["barrier", "destroy"]),
        ("gloo", False, True, ["destroy"]),
        ("nccl", False, False, ["destroy"]),
    ):
        calls.clear()
        monkeypatch.setattr(dist, "get_backend", lambda b=backend: b)
        if crashed:
            monkeypatch.setattr(sys, "last_value", ValueError("boom"), raising=False)
        distributed._close_group()
        assert calls == want, (backend, fail_barrier, crashed, calls)


def test_data_smaller_than_one_global_batch_is_one_line_before_training(monkeypatch):
    """Under torchrun every global batch is whole (drop_last): data with fewer examples
    than batch_size x processes is said as such, not as an empty DataLoader."""
    import pytest

    from probgen.errors import DataError
    from probgen.train import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    net = ddp_worker.net()
    before = [p.detach().clone() for p in net.parameters()]
    assert len(ddp_worker.data()[0]) == 192
    with pytest.raises(
        DataError,
        match=r"192 examples, fewer than one global batch of 256 "
        r"\(batch_size 128 x 2 processes\)",
    ):
        ddp_worker.run(net, batch_size=128)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
