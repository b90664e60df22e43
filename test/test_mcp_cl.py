"""MCP-CL: prototype updates and the multi-positive contrastive loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sdcpc_core.models.prototypes import ClassPrototypes
from sdcpc_core.train.losses import IGNORE_INDEX, mcp_contrastive_loss


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_first_update_replaces_then_ema_moves():
    protos = ClassPrototypes(num_classes=2, num_prototypes=2, dim=2, momentum=0.9)
    protos.prototypes.copy_(torch.stack([unit([1, 0], [0, 1]), unit([1, 0], [0, 1])]))
    # two pixels of class 0 near prototype 0 (x axis), none near prototype 1
    protos.update(unit([1, 0.2], [1, -0.2]), torch.tensor([0, 0]))
    assert protos.initialized.tolist() == [[True, False], [False, False]]
    assert torch.allclose(protos.prototypes[0, 0], unit([1, 0])[0], atol=1e-6)  # the mean, normalised
    assert torch.allclose(protos.prototypes[0, 1], unit([0, 1])[0])  # untouched
    # second update blends with momentum 0.9
    protos.update(unit([1, 1]), torch.tensor([0]))
    expected = F.normalize(0.9 * unit([1, 0])[0] + 0.1 * unit([1, 1])[0], dim=0)
    assert torch.allclose(protos.prototypes[0, 0], expected, atol=1e-6)


def test_pixels_go_to_their_nearest_prototype_of_their_own_class():
    protos = ClassPrototypes(num_classes=2, num_prototypes=2, dim=2, momentum=0.5)
    protos.prototypes.copy_(torch.stack([unit([1, 0], [0, 1]), unit([-1, 0], [0, -1])]))
    protos.update(unit([0.1, 1]), torch.tensor([1]))  # class 1: nearest of (-1,0), (0,-1) is (-1,0)
    assert protos.initialized.tolist() == [[False, False], [True, False]]
    assert torch.allclose(protos.prototypes[1, 0], unit([0.1, 1])[0], atol=1e-6)


def test_update_without_pixels_changes_nothing():
    protos = ClassPrototypes(3, 2, 4, 0.99)
    before = protos.prototypes.clone()
    protos.update(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert torch.equal(before, protos.prototypes) and not protos.initialized.any()


def test_loss_matches_a_hand_computed_value():
    prototypes = torch.stack([unit([1, 0], [0, 1]), unit([-1, 0], [0, -1])])  # (K=2, M=2, D=2)
    valid = torch.tensor([[True, True], [True, False]])
    emb = unit([1, 0])
    t = 0.5
    s = [1 / t, 0 / t, -1 / t]  # similarities to the three valid prototypes
    expected = -math.log((math.exp(s[0]) + math.exp(s[1])) / sum(math.exp(v) for v in s))
    loss = mcp_contrastive_loss(emb, torch.tensor([0]), prototypes, valid, temperature=t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_unseen_classes_and_ignore_pixels_are_left_out():
    prototypes = torch.stack([unit([1, 0], [0, 1]), unit([-1, 0], [0, -1])])
    valid = torch.tensor([[True, True], [False, False]])  # class 1 never seen
    emb = unit([1, 0], [0, 1], [1, 1])
    labels = torch.tensor([0, 1, IGNORE_INDEX])
    loss = mcp_contrastive_loss(emb, labels, prototypes, valid, temperature=0.1)
    # only pixel 0 counts, and with only class 0 valid its positives are all candidates: loss 0
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    nothing = mcp_contrastive_loss(emb.requires_grad_(), torch.tensor([1, 1, 1]), prototypes, valid)
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_loss_pulls_embeddings_towards_their_class():
    torch.manual_seed(0)
    prototypes = F.normalize(torch.randn(3, 2, 8), dim=-1)
    valid = torch.ones(3, 2, dtype=torch.bool)
    emb = torch.randn(16, 8, requires_grad=True)
    labels = torch.randint(0, 3, (16,))
    first = None
    for _ in range(50):
        loss = mcp_contrastive_loss(F.normalize(emb, dim=-1), labels, prototypes, valid)
        first = loss.item() if first is None else first
        loss.backward()
        with torch.no_grad():
            emb -= 0.5 * emb.grad
            emb.grad = None
    assert loss.item() < 0.5 * first
