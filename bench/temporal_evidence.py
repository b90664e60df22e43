"""Evidence study: temporal models against free temporal filters on the same per-frame model, over seeds.

Run with::

    python bench/temporal_evidence.py --data out/synthetic --split val --short-side 240 \\
        --model segformer=out/study/segformer_b0_s*/final.safetensors \\
        --model sdcpc=out/study/sdcpc_b0_s*/final.safetensors \\
        --smoothing none ema:0.5 window --json out/study/val.json

Each ``--model NAME=GLOB`` is one row group: every checkpoint the glob matches is one training seed.
Each checkpoint runs once over every video of the split in streaming order (the node's path,
``StreamingSegmenter``: each frame encoded once, references t-9, t-6, t-3 from the time-keyed cache),
and every ``--smoothing`` variant (``sdcpc_core.eval.smoothing``: ``none``, ``ema:A``, ``window``) is
scored from the same per-frame probabilities, so a filter and the model it filters see identical
frames. For each (group, smoothing) the table gives the mean and the spread (sample standard
deviation) over seeds of mIoU, mVC8, mVC16 and their correct-only variants (``mVC8_correct``: the
share of ground-truth-stable pixels that are predicted correctly in every frame of the window;
``sdcpc_core.eval.metrics``), in the mVC mode of ``--consistency-mode``.

``--switch-off dssa`` (or ``ssea``) evaluates the same checkpoints with that branch's residual zeroed.
``--by-corruption`` (a set written by ``sdcpc-synth``, whose ``synthetic.yaml`` fixes every corruption event)
adds a second table: mIoU on the frames that carry a corruption event (``corrupted``), on clean frames whose
references t-9, t-6, t-3 include one (``after``) and on frames with a clean window (``clean``), the pixel
accuracy on the frames of each kind of event (a frame with two kinds counts for both), and for models with DSSA
the mean of its difference gate in each frame group (``gate_*``, percent: how much of the temporal residual it
lets through).
Prints a Markdown table and a summary line; ``--json`` keeps every number per checkpoint.
``--cache DIR`` keeps each checkpoint's scores (keyed by checkpoint, data, split, smoothing variants,
input size, mVC mode, switched-off branches and the breakdown) and reuses them, so seeds can be added as they finish.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdcpc_core.atomic_files import atomic_write
from sdcpc_core.classes import ClassList
from sdcpc_core.data.datasets import IGNORE, VSPWDataset
from sdcpc_core.data.synthetic import CORRUPTIONS, SyntheticConfig, video_name
from sdcpc_core.data.synthetic.corruptions import schedule
from sdcpc_core.data.transforms import ClipEvalTransform
from sdcpc_core.eval.evaluator import Scorer
from sdcpc_core.eval.metrics import VC_MODES, ConfusionMatrix
from sdcpc_core.eval.smoothing import parse_smoothing
from sdcpc_core.runtime.streaming import StreamingSegmenter
from sdcpc_core.weights import load_model

METRICS = ("mIoU", "mVC8", "mVC16", "mVC8_correct", "mVC16_correct", "accuracy")
FRAME_GROUPS = ("clean", "after", "corrupted")
KINDS = tuple(kind for kind in CORRUPTIONS if kind != "drop")  # a dropped frame is never scored
CORRUPTION_METRICS = (tuple(f"mIoU_{group}" for group in FRAME_GROUPS) + tuple(f"accuracy_{kind}" for kind in KINDS)
                      + tuple(f"gate_{group}" for group in FRAME_GROUPS))
_TINY = torch.finfo(torch.float32).tiny


class FanOut:
    """Stands in for the segmenter's smoother: passes the probabilities through unchanged and keeps, for
    each smoothing variant, its smoothed probabilities of the same frame (``outputs``)."""

    def __init__(self, specs: list[str], offsets: tuple[int, ...]) -> None:
        self.smoothers = [parse_smoothing(spec, offsets) for spec in specs]
        self.outputs: list[torch.Tensor] = []

    def reset(self) -> None:
        for smoother in self.smoothers:
            if smoother is not None:
                smoother.reset()

    def step(self, probs: torch.Tensor) -> torch.Tensor:
        self.outputs = [probs if s is None else s.step(probs) for s in self.smoothers]
        return probs


class CorruptionLookup:
    """The corruption events of every video of a synthetic set, rebuilt from its ``synthetic.yaml``."""

    def __init__(self, root: Path) -> None:
        import yaml

        record_path = root / "synthetic.yaml"
        if not record_path.is_file():
            raise FileNotFoundError(f"--by-corruption needs a set written by sdcpc-synth: {record_path} is missing")
        record = yaml.safe_load(record_path.read_text(encoding="utf-8"))
        config = SyntheticConfig.from_dict(record["config"])
        self.events = {video_name(seed): schedule(config, seed) for seeds in record["seeds"].values() for seed in seeds}

    def kinds(self, video: str, frame_path: str) -> tuple[str, ...]:
        """Kinds of the events covering a frame; its file stem is its index in the drive."""
        index = int(Path(frame_path).stem)
        return tuple(kind for kind in KINDS if self.events[video][kind][index] >= 0)


def frame_groups(kinds: tuple[str, ...], reference_kinds: list[tuple[str, ...]]) -> list[str]:
    """The breakdown groups a frame counts in, from its own events and its references' events."""
    if kinds:
        return ["corrupted", *kinds]
    return ["after" if any(reference_kinds) else "clean"]


def breakdown_scores(confusions: dict[str, ConfusionMatrix], gates: dict[str, list[float]]) -> dict[str, float]:
    """``CORRUPTION_METRICS`` (percent; NaN for a group without frames) from one confusion matrix per group and
    the per-frame mean gates of each group."""
    def score(group: str, measure: str) -> float:
        matrix = confusions.get(group)
        return math.nan if matrix is None else 100 * getattr(matrix, measure)()

    return {**{f"mIoU_{g}": score(g, "miou") for g in FRAME_GROUPS},
            **{f"accuracy_{k}": score(k, "pixel_accuracy") for k in KINDS},
            **{f"gate_{g}": 100 * statistics.fmean(gates[g]) if gates.get(g) else math.nan for g in FRAME_GROUPS}}


def evaluate_checkpoint(path: str, dataset: VSPWDataset, classes: ClassList, specs: list[str], short_side: int,
                        consistency_mode: str, switch_off: list[str], max_videos: int | None = None,
                        corruptions: CorruptionLookup | None = None) -> dict[str, dict[str, float]]:
    """Scores of every smoothing variant of one checkpoint -> ``{spec: {metric: value}}`` (percent); with
    ``corruptions``, the ``CORRUPTION_METRICS`` too."""
    model = load_model(path).eval()
    for branch in switch_off:
        model.switch_off(branch)
    scorers = {spec: Scorer(classes, consistency_mode, set(), None) for spec in specs}
    by_group: dict[str, dict[str, ConfusionMatrix]] = {spec: {} for spec in specs}
    gate: list[float] = []  # DSSA's mean gate on the current frame, when it ran
    gates_by_group: dict[str, list[float]] = {}
    if corruptions is not None and model.config.temporal:
        model.dssa.register_forward_hook(lambda _module, _inputs, output: gate.append(output[1].mean().item()))
    transform = ClipEvalTransform(short_side=short_side)
    single = VSPWDataset(dataset.root, dataset.split, offsets=())  # one-frame clips: each frame read once
    videos = dataset.video_names[:max_videos]
    frames = sum(max(t) + 1 for t in dataset.labelled[:len(videos)] if t)
    with torch.no_grad(), tqdm(total=frames, desc=Path(path).parent.name, unit="frame", leave=False) as bar:
        for v, name in enumerate(videos):
            labelled = set(dataset.labelled[v])
            segmenter = None
            kinds_by_position: list[tuple[str, ...]] = []
            for index in range(max(labelled) + 1 if labelled else 0):
                clip = single.clip(v, index)
                image = clip.frames[-1]
                if corruptions is not None:
                    kinds_by_position.append(corruptions.kinds(name, clip.meta["paths"][-1]))
                if segmenter is None:
                    segmenter = StreamingSegmenter(model, backend="eager", device="cpu",
                                                   input_size=transform([image])["valid_hw"],
                                                   reference_offsets=tuple(dataset.offsets), upsample_logits=True)
                    fan_out = FanOut(specs, tuple(dataset.offsets))
                    segmenter.smoother = fan_out
                gate.clear()
                result = segmenter.step(image, index * segmenter.cache.period_ns)
                if index in labelled:
                    groups: list[str] = []
                    if corruptions is not None:
                        groups = frame_groups(kinds_by_position[index],
                                              [kinds_by_position[index - o] for o in dataset.offsets if index >= o])
                        for group in groups if gate else ():
                            gates_by_group.setdefault(group, []).append(gate[-1])
                    for spec, probs in zip(specs, fan_out.outputs):
                        labels = result.labels if spec == "none" else segmenter.images.to_labels(
                            probs.clamp_min(_TINY).log(), image.shape[:2])[0]
                        scorers[spec].add(name, index, None, image, clip.label, labels)
                        for group in groups:
                            by_group[spec].setdefault(group, ConfusionMatrix(len(classes), IGNORE)).update(
                                clip.label, labels)
                bar.update(1)
            for scorer in scorers.values():
                scorer.end_video()
    scores = {}
    for spec, scorer in scorers.items():
        consistency = scorer.video_consistency()
        scores[spec] = {"mIoU": 100 * scorer.confusion.miou(), "accuracy": 100 * scorer.confusion.pixel_accuracy(),
                        **{k: 100 * v for k, v in consistency.items()}}
        if corruptions is not None:
            scores[spec].update(breakdown_scores(by_group[spec], gates_by_group))
    return scores


def cached_scores(args: argparse.Namespace, path: str, dataset: VSPWDataset, classes: ClassList,
                  corruptions: CorruptionLookup | None) -> dict:
    """``evaluate_checkpoint`` for ``args``, read from / written to ``args.cache`` when given."""
    key = json.dumps([str(Path(path).resolve()), Path(path).stat().st_mtime_ns, str(args.data.resolve()), args.split,
                      args.smoothing, args.short_side, args.consistency_mode, sorted(args.switch_off),
                      args.max_videos] + (["by-corruption"] if args.by_corruption else []))
    entry = args.cache / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json") if args.cache else None
    if entry is not None and entry.exists():
        return json.loads(entry.read_text())
    scores = evaluate_checkpoint(path, dataset, classes, args.smoothing, args.short_side, args.consistency_mode,
                                 args.switch_off, args.max_videos, corruptions)
    if entry is not None:
        atomic_write(entry, lambda tmp: Path(tmp).write_text(json.dumps(scores)))
    return scores


def summarise(results: dict[str, dict[str, dict[str, dict[str, float]]]], specs: list[str],
              metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """Rows ``{group, smoothing, seeds, <metric>: (mean, spread)}`` from ``{group: {checkpoint: {spec: scores}}}``."""
    rows = []
    for group, checkpoints in results.items():
        for spec in specs:
            values = {m: [scores[spec][m] for scores in checkpoints.values()] for m in metrics}
            rows.append({"group": group, "smoothing": spec, "seeds": len(checkpoints),
                         **{m: mean_and_spread(v) for m, v in values.items()}})
    return rows


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds; NaN where a seed has none (e.g. a gate without DSSA)."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def markdown(rows: list[dict], metrics: tuple[str, ...] = METRICS) -> str:
    lines = ["| model | smoothing | seeds | " + " | ".join(metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
    for row in rows:
        cells = ["n/a" if math.isnan(row[m][0]) else f"{row[m][0]:.1f} ± {row[m][1]:.1f}" for m in metrics]
        lines.append(f"| {row['group']} | {row['smoothing']} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=GLOB",
                   help="a row group: a name and a glob of its checkpoints (one per seed); repeatable")
    p.add_argument("--data", type=Path, required=True, help="VSPW-layout data root (e.g. written by sdcpc-synth)")
    p.add_argument("--split", default="val")
    p.add_argument("--smoothing", nargs="+", default=["none", "ema:0.5", "window"],
                   help="variants scored from the same frames (default: none ema:0.5 window)")
    p.add_argument("--short-side", type=int, default=240, help="network input short side (default 240)")
    p.add_argument("--consistency-mode", choices=VC_MODES, default="vspw")
    p.add_argument("--switch-off", action="append", default=[], choices=("ssea", "dssa"),
                   help="zero this branch's residual in every checkpoint (test-time ablation)")
    p.add_argument("--by-corruption", action="store_true",
                   help="also score frames with and after corruption events apart (a set written by sdcpc-synth)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--max-videos", type=int, help="only the first N videos (a quick check)")
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--cache", type=Path, help="folder of per-checkpoint scores reused across runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for spec in args.smoothing:
        parse_smoothing(spec)  # one sentence for a bad variant before any work

    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    dataset = VSPWDataset(args.data, args.split)
    try:
        corruptions = CorruptionLookup(args.data) if args.by_corruption else None
    except (FileNotFoundError, ValueError) as error:
        p.error(str(error))
    classes = ClassList.from_yaml(args.data / "classes.yaml")
    results: dict = {}
    start = time.perf_counter()
    for item in args.model:
        group, _, pattern = item.partition("=")
        paths = sorted(glob.glob(pattern))
        if not paths:
            p.error(f"--model {item!r}: no checkpoint matches {pattern!r}")
        results[group] = {path: cached_scores(args, path, dataset, classes, corruptions) for path in paths}
    rows = summarise(results, args.smoothing)
    print(f"{args.data} {args.split}, streaming, short side {args.short_side}, mVC mode {args.consistency_mode}"
          f"{', switched off: ' + ', '.join(args.switch_off) if args.switch_off else ''}; mean ± spread over seeds")
    print(markdown(rows))
    if args.by_corruption:
        corruption_rows = summarise(results, args.smoothing, CORRUPTION_METRICS)
        print("\nBy corruption events (mIoU by frame group, pixel accuracy by kind of event):")
        print(markdown(corruption_rows, CORRUPTION_METRICS))
        rows += corruption_rows
    print(f"{sum(len(c) for c in results.values())} checkpoints, {len(args.smoothing)} smoothing variants, "
          f"{time.perf_counter() - start:.0f} s; ignore label {IGNORE}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "rows": rows, "args": vars(args)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
