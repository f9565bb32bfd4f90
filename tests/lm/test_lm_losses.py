"""The CodeEraser / GA / constraint losses: signs, per-token normalisation, pads excluded, KL = 0 at start."""

from __future__ import annotations

import torch

from erasekit.methods.codeeraser import (
    codeeraser_forget_loss,
    constraint_forget_loss,
    ga_forget_loss,
    masked_mean,
    retain_loss,
    token_ce,
    token_kl,
)


def _case():
    g = torch.Generator().manual_seed(0)
    ce = torch.rand(2, 6, generator=g) * 3
    kl = torch.rand(2, 6, generator=g)
    real = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    m = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 1, 0, 1, 1]], dtype=torch.bool)  # row 2: two marks on pads
    return ce, kl, real, m


def test_codeeraser_loss_matches_the_equation_by_hand():
    ce, kl, real, m = _case()
    gamma, lam = 0.1, 0.1
    secret = [(0, 1), (0, 2), (1, 2)]
    context = [(0, 0), (0, 3), (0, 4), (0, 5), (1, 0), (1, 1)]
    expected = (
        -sum(ce[i, j] for i, j in secret) / 3
        + gamma * sum(ce[i, j] for i, j in context) / 6
        - lam * sum(kl[i, j] for i, j in secret) / 3
    )
    got = codeeraser_forget_loss(ce, kl, real, m, gamma, lam)
    assert torch.allclose(got, expected)


def test_pads_do_not_change_any_loss():
    ce, kl, real, m = _case()
    ce2, kl2 = ce.clone(), kl.clone()
    ce2[~real], kl2[~real] = 1e6, 1e6  # garbage at pad positions
    assert torch.equal(
        codeeraser_forget_loss(ce, kl, real, m, 0.1, 0.1), codeeraser_forget_loss(ce2, kl2, real, m, 0.1, 0.1)
    )
    assert torch.equal(ga_forget_loss(ce, real), ga_forget_loss(ce2, real))
    assert torch.equal(constraint_forget_loss(ce, kl, real, 0.1), constraint_forget_loss(ce2, kl2, real, 0.1))
    assert torch.equal(retain_loss(kl, real, 0.1, 1.0), retain_loss(kl2, real, 0.1, 1.0))


def test_signs_ascend_on_secrets_and_descend_on_context_and_retain():
    ce, kl, real, m = _case()
    base = codeeraser_forget_loss(ce, kl, real, m, 0.1, 0.1)
    more_secret_ce = ce + m.float()  # higher CE on secret tokens lowers the loss (ascent)
    assert codeeraser_forget_loss(more_secret_ce, kl, real, m, 0.1, 0.1) < base
    more_context_ce = ce + (real & ~m).float()  # higher CE on context raises it (descent, γ > 0)
    assert codeeraser_forget_loss(more_context_ce, kl, real, m, 0.1, 0.1) > base
    assert codeeraser_forget_loss(ce, kl + m.float(), real, m, 0.1, 0.1) < base  # KL on secrets maximised
    assert retain_loss(kl + 1, real, 0.1, 1.0) > retain_loss(kl, real, 0.1, 1.0)  # retain KL minimised


def test_kl_is_a_per_token_mean_on_both_branches():
    # Duplicating rows or padding more must not rescale a branch (the reference's 'batchmean' does).
    _ce, kl, real, m = _case()
    doubled = retain_loss(torch.cat([kl, kl]), torch.cat([real, real]), 0.1, 1.0)
    assert torch.allclose(doubled, retain_loss(kl, real, 0.1, 1.0))
    padded_kl = torch.cat([kl, torch.zeros(2, 50)], 1)
    padded_real = torch.cat([real, torch.zeros(2, 50, dtype=torch.bool)], 1)
    assert torch.allclose(retain_loss(padded_kl, padded_real, 0.1, 1.0), retain_loss(kl, real, 0.1, 1.0))
    assert torch.allclose(masked_mean(kl, real & m), kl[real & m].mean())


def test_kl_is_zero_at_the_start_and_ce_is_the_lm_loss(tiny_lm):
    batch = tiny_lm.encode(["def add_a_b(a, b):\n    return a + b\n", "x = 1\n"])
    copy = tiny_lm.trainable_copy()
    with torch.no_grad():
        ref = tiny_lm.logits(batch.input_ids, batch.attention_mask)[:, :-1]
        mine = tiny_lm.logits(batch.input_ids, batch.attention_mask, copy)[:, :-1]
    kl = token_kl(ref, mine)
    assert torch.allclose(kl, torch.zeros_like(kl), atol=1e-6)
    labels = batch.input_ids[:, 1:]
    real = batch.attention_mask[:, 1:].bool()
    ce = token_ce(mine, labels)
    hf = torch.nn.functional.cross_entropy(
        mine.transpose(1, 2), labels.masked_fill(~real, -100), ignore_index=-100
    )
    assert torch.allclose(masked_mean(ce, real), hf)
    # and KL grows once the copy's weights move
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(0.05 * torch.randn_like(p))
        moved = tiny_lm.logits(batch.input_ids, batch.attention_mask, copy)[:, :-1]
    assert masked_mean(token_kl(ref, moved), real) > 1e-4
