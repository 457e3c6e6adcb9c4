"""torchrun data parallelism: 2 gloo processes on the CPU against one process."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests import ddp_worker
from tests.conftest import ROOT


def test_two_processes_equal_one_process_on_the_combined_batches(tmp_path):
    out, ckpt = tmp_path / "ddp.pt", tmp_path / "ddp_ckpt.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "ddp_worker.py"), str(out), str(ckpt)],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out)
    assert got["world_size"] == 2
    both, one, none = got["grads"]
    assert torch.equal(both, torch.full((3,), 1.5)) and torch.equal(one, torch.full((3,), 2.0))
    assert none is None     # no process had a gradient: the optimizer skips it, as alone
    single = ddp_worker.net()
    res = ddp_worker.run(single, batch_size=32)      # the two processes' batches together
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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "examples" / "vae.py"), "--smoke", "--threads", "1", "--no-progress",
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Test set") == 1            # rank 1 trains but does not report
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert (out / "results.json").exists() and (out / "samples.png").exists()
