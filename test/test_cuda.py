"""Every GPU path on a CUDA device: training (one GPU in fp32 and bf16; ``torchrun`` DDP on NCCL with two
GPUs), evaluation, streaming with each PyTorch back end against CPU eager, the fused window kernel as
the CUDA default, and export of a CUDA model.

Every test is marked ``gpu``: without a CUDA device they skip with the reason (test/conftest.py).
``bench/gpu_session.sh`` runs them on the GPU machine. Reduced-precision tolerances are argmax
agreements with the CPU fp32 result; fp32 comparisons run with TF32 off (cuDNN convolutions use it
by default), so that they compare the same arithmetic.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

cv2 = pytest.importorskip("cv2")

from test_train import tiny_config, write_tree  # noqa: E402

from sdcpc_core.classes import ClassList  # noqa: E402
from sdcpc_core.models import build_model  # noqa: E402
from sdcpc_core.ops import window_attention as dispatch  # noqa: E402
from sdcpc_core.runtime import StreamingSegmenter, create_backend  # noqa: E402
from sdcpc_core.runtime.programs import assert_static, export_programs  # noqa: E402
from sdcpc_core.train.checkpointing import latest_checkpoint, load_checkpoint  # noqa: E402
from sdcpc_core.train.logs import read_log  # noqa: E402
from sdcpc_core.train.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 96)
CLASSES = 5
OFFSETS = (3, 2, 1)


@pytest.fixture
def no_tf32():
    """fp32 on the GPU as on the CPU: no TF32 in convolutions or matrix products."""
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def _model(variant: str = "sdcpc_b0", **overrides) -> torch.nn.Module:
    """A tiny model whose temporal part changes the output (zero-initialised scales set at random)."""
    torch.manual_seed(0)
    model = build_model(variant, CLASSES, **overrides)
    if model.is_temporal:
        with torch.no_grad():
            for parameter in model.zero_initialised_scales():
                parameter.normal_()
    return model.eval()


SMALL = {"coarse_tokens": 4, "embed_dim": 16, "heads": 2, "window": 3, "ssea_grids": (1,)}  # quick to compile


def _images(count: int = 6) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, *SIZE, generator=generator) for _ in range(count)]


def _stream(backend, images) -> list[torch.Tensor]:
    """Float32 CPU logits of each frame; the references are the frames ``OFFSETS`` back (clamped at 0)."""
    caches, logits = [], []
    for t, image in enumerate(images):
        caches.append(backend.encode(image))
        refs = [caches[max(t - offset, 0)].without_logits() for offset in OFFSETS]
        logits.append(backend.temporal(caches[-1], refs).float().cpu())
    return logits


def _agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return torch.cat([(x.argmax(1) == y.argmax(1)).flatten() for x, y in zip(a, b)]).double().mean().item()


# --------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_steps_on_cuda(precision, tmp_path):
    root = write_tree(tmp_path / "tree")
    out = tmp_path / "run"
    config = tiny_config(root, out, schedule={"iterations": 10, "warmup_iters": 2},
                         runtime={"device": "cuda", "precision": precision, "checkpoint_every": 5})
    trainer = Trainer(config, progress=False)
    result = trainer.fit()
    trainer.close()
    assert trainer.device.type == "cuda" and next(trainer.model.parameters()).is_cuda
    losses = [r["loss"] for r in read_log(out / "log.jsonl") if r["kind"] == "train"]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    # noisy step to step (batches of 2 clips; on the CPU: 7.7, 8.2, 4.5 ... 2.0, 0.9, 2.1)
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), f"the loss did not fall in {precision}: {losses}"
    assert bool(trainer.model.prototypes.initialized.any())  # MCP-CL prototypes updated on the GPU
    assert result.final_weights is not None and result.final_weights.is_file()
    # the checkpoint round-trips: the same weights in a fresh CPU model, and a resumed trainer on the GPU
    fresh = build_model("sdcpc_b0", CLASSES, **config.model.options)
    state = load_checkpoint(latest_checkpoint(out), fresh)
    assert int(state["step"]) == 10
    trained = {k: v.cpu() for k, v in trainer.model.state_dict().items()}
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, trained[name]), name
    resumed = Trainer(config, resume=True, progress=False)
    assert resumed.step == 10 and next(resumed.model.parameters()).is_cuda
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value.cpu(), trained[name]), name
    resumed.close()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason=f"torchrun DDP on NCCL needs two CUDA devices (found {torch.cuda.device_count()})")
def test_torchrun_ddp_on_nccl(tmp_path):
    root = write_tree(tmp_path / "tree")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(
        root, tmp_path / "run", schedule={"iterations": 2},
        runtime={"device": "cuda", "precision": "bf16", "sync_bn": True}).to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "sdcpc_core.train", "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_log(tmp_path / "run" / "log.jsonl")
    assert records[0]["processes"] == 2 and records[0]["device"] == "cuda:0"
    assert [r["iter"] for r in records if r["kind"] == "train"] == [1, 2]
    assert (tmp_path / "run" / "final.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["event"] == "done"


# ------------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("backend", ["eager", "compile", "cudagraph"])
@pytest.mark.parametrize("variant", ["sdcpc_b0", "segformer_b0"])
def test_streaming_backend_matches_cpu_eager(backend, variant, no_tf32):
    model = _model(variant, **(SMALL if variant == "sdcpc_b0" else {"embed_dim": 16}))
    images = _images()
    want = _stream(create_backend("eager", copy.deepcopy(model), SIZE), images)
    cuda = create_backend(backend, copy.deepcopy(model), SIZE, device="cuda")
    got = _stream(cuda, images)
    for t, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=lambda m, t=t: f"frame {t}: {m}")
    if backend == "cudagraph":  # captured once, then replayed with each frame's data
        assert cuda.fallback_reason is None, cuda.fallback_reason
        assert cuda.captures == len(cuda.captured) == (2 if model.is_temporal else 1)
    if backend == "compile" and cuda.fallback_reason:
        print(f"compile fell back to eager: {cuda.fallback_reason}")  # allowed: the node keeps running


@pytest.mark.parametrize("backend", ["eager", "cudagraph"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_streaming_in_half_precision_agrees_with_cpu(backend, precision):
    model = _model("sdcpc_b0", coarse_tokens=4, window=3)
    images = _images()
    want = _stream(create_backend("eager", copy.deepcopy(model), SIZE), images)
    got = _stream(create_backend(backend, copy.deepcopy(model), SIZE, device="cuda", precision=precision), images)
    agreement = _agreement(got, want)
    assert agreement >= (0.97 if precision == "fp16" else 0.93), f"{backend} {precision}: {100 * agreement:.1f}%"


def test_compile_mode_reduce_overhead_keeps_earlier_outputs(no_tf32):
    """CUDA-graph modes overwrite their outputs on the next call: the back end clones them (the reference
    cache keeps a frame's outputs for several frames)."""
    model = _model("sdcpc_b0", **SMALL)
    images = _images()
    want = _stream(create_backend("eager", copy.deepcopy(model), SIZE), images)
    backend = create_backend("compile", copy.deepcopy(model), SIZE, device="cuda", mode="reduce-overhead")
    got = _stream(backend, images)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


def test_streaming_segmenter_with_cuda_graphs_labels_as_cpu(tiny_temporal_model):
    generator = torch.Generator().manual_seed(3)
    frames = [torch.randint(0, 256, (60, 90, 3), generator=generator, dtype=torch.uint8).numpy() for _ in range(8)]
    cpu = StreamingSegmenter(copy.deepcopy(tiny_temporal_model), input_size=SIZE, reference_offsets=OFFSETS)
    gpu = StreamingSegmenter(copy.deepcopy(tiny_temporal_model), backend="cudagraph", device="cuda",
                             input_size=SIZE, reference_offsets=OFFSETS)
    period = cpu.cache.period_ns
    same = []
    for index, frame in enumerate(frames):
        a, b = cpu.step(frame, index * period, "cam"), gpu.step(frame, index * period, "cam")
        assert a.references == b.references and b.labels.shape == frame.shape[:2]
        same.append((a.labels == b.labels).mean())
    assert min(same) >= 0.99, same
    assert gpu.backend.fallback_reason is None and gpu.backend.captures == 2


def test_fused_window_kernel_is_the_cuda_default_and_can_be_turned_off(monkeypatch, no_tf32):
    calls = []
    original = dispatch.fused_window_attention
    monkeypatch.setattr(dispatch, "fused_window_attention", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    monkeypatch.setattr(dispatch, "_FUSED_AUTOMATIC", True)
    model = _model("sdcpc_b0", coarse_tokens=4, window=3)
    images = _images(4)
    fused = _stream(create_backend("eager", copy.deepcopy(model), SIZE, device="cuda"), images)
    assert len(calls) == len(images)  # one window attention per temporal step, each the fused op
    plain = _stream(create_backend("eager", copy.deepcopy(model), SIZE, device="cuda",
                                   fused_window_attention=False), images)
    assert len(calls) == len(images)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_export_of_a_cuda_model_is_static_and_plain(tiny_temporal_model):
    model = copy.deepcopy(tiny_temporal_model).cuda()
    programs = export_programs(model, *SIZE, num_refs=3, strict=False)
    image = torch.randn(1, 3, *SIZE, device="cuda")
    for name, program in programs.items():
        assert_static(program)
        targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
        assert not any("sdcpc" in t for t in targets), f"{name}: the automatic switch keeps exports plain"
    with torch.no_grad():
        want = model.encode_frame(image).logits
        got = programs["encode"].module()(image)[-1]
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------------------------------ evaluation
def test_evaluator_on_cuda_predicts_as_on_cpu(tiny_temporal_model, tmp_path):
    from test_evaluator import NUM_CLASSES, SHORT_SIDE, _write_vspw

    from sdcpc_core.data.datasets import VSPWDataset
    from sdcpc_core.eval.evaluator import evaluate

    _write_vspw(tmp_path)
    dataset = VSPWDataset(str(tmp_path), "val")
    model = copy.deepcopy(tiny_temporal_model)
    for mode in ("clip", "streaming"):
        runs = {}
        for device in ("cpu", "cuda"):
            seen = []
            report = evaluate(model, dataset, ClassList.generic(NUM_CLASSES), mode=mode, short_side=SHORT_SIDE,
                              device=device, progress=False,
                              on_frame=lambda record, label, pred, seen=seen: seen.append(pred))
            runs[device] = (report, seen)
            assert next(model.parameters()).device.type == "cpu"  # given back on its own device
        (cpu_report, cpu_preds), (gpu_report, gpu_preds) = runs["cpu"], runs["cuda"]
        assert gpu_report.info["device"] == "cuda" and len(gpu_preds) == len(cpu_preds) > 0
        agreement = sum((a == b).mean() for a, b in zip(cpu_preds, gpu_preds)) / len(cpu_preds)
        assert agreement >= 0.99, f"{mode}: {100 * agreement:.2f}% of pixels agree"
        assert abs(gpu_report.summary()["mIoU"] - cpu_report.summary()["mIoU"]) < 2.0
