"""MaskedAdamW: torch's AdamW when applied, an exact no-op when withheld, and why master weights
must be float32 (a 2e-5 update of a weight near 1 is below bf16 resolution)."""

from __future__ import annotations

import copy

import pytest
import torch

from cambrian_train.train.adamw import MaskedAdamW


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(3))]


def _grads(step, params):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


@pytest.mark.parametrize("lr_tensor", [False, True])
def test_matches_torch_adamw(lr_tensor):
    ours = _params()
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    lr = torch.tensor(3e-2) if lr_tensor else 3e-2
    opt = MaskedAdamW(ours, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref, lr=3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for step in range(6):
        for p, q, g in zip(ours, ref, _grads(step, ours)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step(apply=torch.tensor(True))
        ref_opt.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][key], ref_opt.state[q][key])
        assert float(opt.state[p]["step"]) == float(ref_opt.state[q]["step"]) == 6


@pytest.mark.parametrize("first", [True, False])
def test_withheld_step_changes_nothing(first):
    params = _params()
    opt = MaskedAdamW(params, lr=1e-2, weight_decay=0.1)
    if not first:
        for p, g in zip(params, _grads(0, params)):
            p.grad = g
        opt.step()
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict()["state"])
    for p, g in zip(params, _grads(1, params)):
        p.grad = torch.full_like(g, float("nan"))
    opt.step(apply=torch.tensor(False))
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    after = opt.state_dict()["state"]
    for k, saved in state.items():
        for key, value in saved.items():
            assert torch.equal(after[k][key], value), key
    if first:  # a withheld first step leaves step 0 and finite (zero) moments
        assert all(float(s["step"]) == 0 for s in after.values())
    # the next good step is an ordinary Adam step
    for p, g in zip(params, _grads(2, params)):
        p.grad = g
    opt.step(apply=torch.tensor(True))
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("dtype, applied", [(torch.float32, True), (torch.bfloat16, False)])
def test_small_update_needs_float32_master_weights(dtype, applied):
    """Adam's first step moves every weight by lr (here 2e-5) against the gradient's sign:
    representable next to 1.0 in float32 (spacing 1.2e-7), lost in bf16 (spacing 7.8e-3)."""
    weight = torch.nn.Parameter(torch.ones(64, dtype=dtype))
    opt = MaskedAdamW([weight], lr=2e-5, weight_decay=0.0)
    weight.grad = torch.ones_like(weight)
    opt.step()
    moved = (1.0 - weight.detach().double()).mean().item()
    if applied:
        assert moved == pytest.approx(2e-5, rel=1e-2)
    else:
        assert moved == 0.0
