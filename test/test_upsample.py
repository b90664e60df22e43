"""upsample_bilinear_add_: the in-place phase formulation against F.interpolate."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdcpc_core.ops import upsample as upsample_module
from sdcpc_core.ops import upsample_bilinear_add_

SIZES = [  # (h, w) -> (H, W)
    ((4, 6), (8, 12)),
    ((4, 6), (16, 24)),
    ((2, 3), (16, 24)),
    ((3, 5), (9, 15)),  # odd factor: a phase with no neighbour
    ((4, 6), (8, 24)),  # different factors per axis
    ((1, 1), (4, 8)),  # one pixel: every tap is the edge
    ((5, 7), (5, 7)),  # factor 1
]


def _reference(target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return target + F.interpolate(x, size=target.shape[-2:], mode="bilinear", align_corners=False)


def _no_interpolate(*args, **kwargs):
    raise AssertionError("the in-place path must not call F.interpolate")


@pytest.mark.parametrize("small, large", SIZES)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_inplace_phases_match_interpolate(small, large, dtype, tol, monkeypatch):
    x = torch.randn(2, 3, *small, dtype=dtype)
    target = torch.randn(2, 3, *large, dtype=dtype)
    expected = _reference(target, x)
    monkeypatch.setattr(upsample_module.F, "interpolate", _no_interpolate)
    with torch.no_grad():
        out = upsample_bilinear_add_(target, x)
    assert out is target
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)


def test_other_factors_and_autograd_use_interpolate():
    target, x = torch.randn(1, 2, 12, 10), torch.randn(1, 2, 5, 4)  # 12/5: not an integer factor
    expected = _reference(target, x)
    with torch.no_grad():
        torch.testing.assert_close(upsample_bilinear_add_(target, x), expected, rtol=0, atol=0)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    base = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    out = upsample_bilinear_add_(base.clone(), x)
    torch.testing.assert_close(out, _reference(base, x))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.allclose(grad, torch.full_like(x, 4.0))  # each input pixel's weights sum to the factor 2 x 2
