"""Many processes: DistributedDataParallel on the CPU (gloo), against one process on the same global batch.

Why the comparison is exact: the global batch is 2 clips in both set-ups. Two processes load 1 clip
each (``optim.accumulation`` 1); one process loads the same 2 clips (the clip stream is a function of
the sample index, not of the process) as 2 accumulated micro-batches of 1 clip. Every forward is
therefore the same computation on the same clip, so the decode head's BatchNorm, which normalises
with the statistics of its forward's batch, sees the same statistics in both; a single process
with one micro-batch of 2 clips would not (its statistics would mix the two clips). Dropout and
stochastic depth are switched off, since their random masks depend on the process. The loss terms
are normalised by the pixel counts of the global batch (all-reduced), so DDP's gradient average
equals the accumulated gradient: bitwise in the first step (scaling by 2 and averaging 2 values are
exact in floating point). The MCP-CL prototypes are updated after the first step (all-reduced across
processes), so the second step compares the contrastive term too, up to float summation order.

SyncBatchNorm is not part of the comparison: in this torch it refuses CPU tensors ("SyncBatchNorm
expected input tensor to be on GPU"), so the trainer refuses ``runtime.sync_bn`` with more than one
process on the CPU, with a message (tested below).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_train import TINY_MODEL, tiny_config, write_tree

from sdcpc_core.train.logs import read_log
from sdcpc_core.train.trainer import DistEnv, SetupError, Trainer

STEPS = 2
NO_RANDOMNESS = {**TINY_MODEL, "classifier_dropout": 0.0, "drop_path_rate": 0.0}


def _config(root: Path, out: Path, accumulation: int):
    return tiny_config(root, out, model={"options": NO_RANDOMNESS}, optim={"accumulation": accumulation},
                       schedule={"iterations": STEPS})


def _gradients(trainer: Trainer) -> list[dict]:
    """Losses and gradients of the first STEPS steps (the optimiser and prototypes step in between)."""
    steps = []
    batches = trainer.micro_batches()
    for _ in range(STEPS):
        group, _ = next(batches)
        losses = trainer.backward(group)
        grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        steps.append({"losses": losses, "grads": grads})
        trainer.optimizer_step()
    batches.close()
    return steps


def _worker(rank: int, world: int, port: int, root: str, out: str, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(_config(Path(root), Path(out), accumulation=1))  # rank and world size from the environment
    steps = _gradients(trainer)
    if rank == 0:
        torch.save(steps, result)
    trainer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_give_the_gradients_of_one_process(tmp_path):
    root = write_tree(tmp_path / "tree")
    result = tmp_path / "ddp.pt"
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(root), str(tmp_path / "ddp"), str(result)),
                                nprocs=2, join=True)
    ddp = torch.load(result, weights_only=True)
    single_trainer = Trainer(_config(root, tmp_path / "single", accumulation=2), env=DistEnv())
    single = _gradients(single_trainer)
    single_trainer.close()
    first, second = zip(single, ddp)
    assert first[0]["grads"].keys() == first[1]["grads"].keys() and len(first[0]["grads"]) > 100
    assert first[0]["losses"] == first[1]["losses"]
    assert all(torch.equal(g, first[1]["grads"][name]) for name, g in first[0]["grads"].items())  # bitwise
    # Step 2: the prototypes were averaged over the processes in another order than over the micro-batches,
    # so rounding differs (seen: 5e-7 of a tensor's largest gradient). Biases in front of the decode head's
    # BatchNorm have a true gradient of 0 (BatchNorm removes constant shifts): theirs is rounding noise,
    # hence the floor relative to the largest gradient of the model.
    for name in second[0]["losses"]:
        assert second[0]["losses"][name] == pytest.approx(second[1]["losses"][name], rel=1e-6), name
    largest = max(g.abs().max() for g in second[0]["grads"].values())
    for name, grad in second[0]["grads"].items():
        error = (grad - second[1]["grads"][name]).abs().max()
        assert error <= 1e-5 * grad.abs().max() + 1e-7 * largest, (name, float(error))
    assert single[1]["losses"]["mcp"] > 0  # the second step has prototypes, so MCP-CL is compared too
    assert single[0]["grads"]["ssea.gamma"].abs().sum() > 0


def test_sync_batchnorm_is_refused_on_the_cpu(tmp_path):
    root = write_tree(tmp_path / "tree", frames=4)
    config = tiny_config(root, tmp_path / "run", runtime={"sync_bn": True, "device": "cpu"})
    with pytest.raises(SetupError, match=r"runtime\.sync_bn needs CUDA devices"):
        Trainer(config, env=DistEnv(rank=0, world_size=2, local_rank=0))


@pytest.mark.slow
def test_torchrun_two_processes_train_and_rank_0_writes(tmp_path):
    root = write_tree(tmp_path / "tree")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(root, tmp_path / "run", schedule={"iterations": 2}).to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "sdcpc_core.train", "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_log(tmp_path / "run" / "log.jsonl")
    assert records[0]["event"] == "start" and records[0]["processes"] == 2 and records[0]["micro_batch"] == 1
    assert [r["iter"] for r in records if r["kind"] == "train"] == [1, 2]
    assert (tmp_path / "run" / "final.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["iter_000002", "latest"]
    assert proc.stderr.count("2/2 iterations of sdcpc_b0") == 1  # one summary: rank 0 only
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["event"] == "done"
