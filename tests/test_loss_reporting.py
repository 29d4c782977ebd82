"""The loss reaches the trace and the progress line however backward is called (issue 35 item 7):
``optimizer.backward(scaler.scale(loss))`` reports the unscaled loss, and a loop that reports none
gets a progress line without a loss instead of ``loss nan``. Under mpiexec: test_library_mpi."""

import torch

from qtrain.engine.progress import ProgressReporter
from qtrain.library.optimizer import scaler_factor


def test_the_factor_of_a_grad_scalers_scaled_loss_is_found():
    w = torch.nn.Parameter(torch.tensor([1.5, -2.0]))
    loss = (w * torch.tensor([3.0, 0.25])).sum()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    assert scaler_factor(scaler.scale(loss)) == 1024.0
    assert scaler_factor(torch.amp.GradScaler("cpu").scale(loss)) == 65536.0


def test_any_other_loss_has_no_factor():
    w = torch.nn.Parameter(torch.tensor([1.5, -2.0]))
    loss = (w * w).sum()
    assert scaler_factor(loss) is None
    assert scaler_factor(loss * 2.0) is None  # a python factor: the user's own loss
    assert scaler_factor(loss * torch.tensor(3.0)) is None  # not a power of two
    assert scaler_factor(loss * torch.tensor(0.5)) is None  # below the scaler's range
    assert scaler_factor(loss * torch.tensor(2.0, dtype=torch.float64)) is None


def test_the_progress_line_leaves_out_a_loss_nobody_reported():
    lines = []
    p = ProgressReporter(10, 1, lines.append, mode="lines")
    p.update(1, float("nan"), None, 100.0, 100.0, 400.0)
    p.update(2, 0.5, 0.75, 100.0, 100.0, 400.0)
    tail = "up 100 B/worker (4.0x < fp32) down 100 B/worker (4.0x < fp32)"
    assert lines == [f"step 1/10 {tail}", f"step 2/10 loss 0.5000 acc 0.7500 {tail}"]
