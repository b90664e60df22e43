"""sdcpc-model-info: parameter and FLOP table of a variant."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sdcpc_core.models import build_model
from sdcpc_core.tools.cli import parse_size
from sdcpc_core.tools.model_info import MODULES, main, sdpa_is_counted

HEIGHT, WIDTH, CLASSES = 64, 96, 5




def test_model_info_table_and_json(tmp_path, capsys):
    path = tmp_path / "b0.json"
    assert main(["--variant", "sdcpc_b0", "--num-classes", str(CLASSES), "--size", f"{HEIGHT}x{WIDTH}",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    for name in (*MODULES, "prototypes", "total", "buffers", "segformer_b0", "CFFM", "MRCFA", "TV3S",
                 "2 x multiply-adds", "analytic"):
        assert name in out, name
    data = json.loads(path.read_text())
    flops, params = data["flops"], data["params"]

    # Streaming = static + temporal, module by module.
    for name in (*MODULES, "total"):
        assert flops["streaming"][name] == flops["static"][name] + flops["temporal"][name], name
    for phase in flops.values():
        assert sum(phase[name] for name in MODULES) + phase["other"] == phase["total"]
        assert phase["other"] == 0  # every counted op belongs to a top-level module

    # The window attention is element-wise (invisible to FlopCounterMode) and counted analytically.
    window = 2 * 2 * 3 * 64 * (HEIGHT // 8) * (WIDTH // 8) * 7 ** 2  # window_dim 64
    assert flops["temporal"]["total"] > window > 0
    assert flops["temporal"]["dssa"] > window
    assert flops["temporal"]["backbone"] == 0 and flops["temporal"]["decode_head"] == 0
    # A 4-frame clip runs the static branch of every frame once, plus one temporal step (3 references),
    # plus DSSA's output projection (window_dim 64 -> 256 at 1/8), which only training builds (the
    # residual D feeds MCP-CL; the temporal classifier is folded through it).
    assert flops["clip"]["backbone"] == 4 * flops["static"]["backbone"]
    projection = 2 * 64 * 256 * (HEIGHT // 8) * (WIDTH // 8)
    assert flops["clip"]["dssa"] == 4 * flops["static"]["dssa"] + flops["temporal"]["dssa"] + projection

    # SD-CPC's static branch costs at least the per-frame SegFormer with the same decoder width.
    assert flops["static"]["total"] >= data["baseline"]["flops"] > 0
    assert data["streaming_over_baseline"] == pytest.approx(flops["streaming"]["total"] / data["baseline"]["flops"])

    model = build_model("sdcpc_b0", CLASSES)
    assert params["total"] == sum(p.numel() for p in model.parameters())
    for name in MODULES:
        assert params[name] == sum(p.numel() for p in getattr(model, name).parameters()), name
    assert params["prototypes"] == 0
    assert data["prototype_buffer_values"] == sum(b.numel() for b in model.prototypes.buffers())
    baseline = build_model("segformer_b0", CLASSES, embed_dim=model.config.embed_dim)
    assert data["baseline"]["params"] == sum(p.numel() for p in baseline.parameters())


def test_sdpa_is_counted_on_meta():
    assert sdpa_is_counted()
    q = torch.empty(2, 4, 10, 8, device="meta")
    k = torch.empty(2, 4, 6, 8, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        F.scaled_dot_product_attention(q, k, k)
    assert counter.get_total_flops() == 2 * 2 * (2 * 4 * 10 * 6 * 8)  # two products, 2 FLOPs per multiply-add


def test_bad_size_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--size", "480"])
    assert exit_info.value.code == 2
    assert "argument --size: size must be HEIGHTxWIDTH with both >= 32, got '480'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--size", "16x64"])
    assert exit_info.value.code == 2


def test_unknown_variant_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--variant", "sdcpc_b9", "--size", "64x64"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model variant 'sdcpc_b9'" in err and "sdcpc_b1" in err and "Traceback" not in err


def test_parse_size():
    assert parse_size("480x853") == (480, 853)
    assert parse_size("32X32") == (32, 32)
    for text in ("480", "x", "0x64", "64x-1", "64x31", "a x b"):
        with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
            parse_size(text)
