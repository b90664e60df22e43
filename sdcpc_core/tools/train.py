"""``sdcpc-train``: train SD-CPC (or a per-frame SegFormer baseline) from a YAML configuration.

Examples::

    sdcpc-train --config config/train/synthetic_b0.yaml
    sdcpc-train --config config/train/vspw_b1.yaml --init-from weights/segformer-b1 --set optim.lr=1e-4
    sdcpc-train --config config/train/vspw_b1.yaml --resume
    torchrun --nproc_per_node 4 -m sdcpc_core.train --config config/train/vspw_b1.yaml

The run folder (``runtime.out_dir``, default ``out/train/<config name>``, or ``--out``) receives
``config.yaml`` (the resolved configuration), ``log.jsonl``, ``checkpoints/iter_*`` (atomic, the
newest ``runtime.keep_checkpoints`` kept, ``checkpoints/latest`` naming the newest),
``final.safetensors`` (the weights to deploy, with the class list) and ``training.png``; see
``sdcpc_core.train``. ``--resume`` continues from ``checkpoints/latest`` (or starts the run when
there is no checkpoint yet); without it an existing run folder is refused.

Exit status: 0 when done; 1 when the loss became NaN/inf (the last good checkpoint is kept);
2 for a bad option, configuration, data set or checkpoint (one sentence on stderr); 130 when
interrupted.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

PROG = "sdcpc-train"


class _Parser(argparse.ArgumentParser):
    """Argument errors as one sentence (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Train SD-CPC from a YAML configuration (config/train/*.yaml).")
    parser.add_argument("--config", required=True, type=Path, help="training configuration (YAML)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the output folder from its latest checkpoint")
    parser.add_argument("--init-from", default=None, metavar="WEIGHTS",
                        help="SegFormer / SD-CPC weights to start from (a shipped name, a Hugging Face folder, an "
                             "NVlabs or mmseg .pth, an sdcpc .safetensors); overrides model.init_from")
    parser.add_argument("--out", type=Path, default=None, help="run folder (overrides runtime.out_dir)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                        help="override one configuration field, e.g. --set optim.lr=1e-4 (repeatable)")
    return parser


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging(is_main: bool) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    package = logging.getLogger("sdcpc_core")
    package.addHandler(handler)
    package.setLevel(logging.INFO if is_main else logging.WARNING)
    logging.captureWarnings(True)  # warnings (e.g. a skipped unreadable image) also above the bar
    logging.getLogger("py.warnings").addHandler(handler)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def summary_line(result, variant: str) -> str:
    """One line: iterations, time, speed, final loss, validation, where the weights are."""
    parts = [f"{result.step}/{result.iterations} iterations of {variant} in {_duration(result.seconds)}",
             f"{result.clips_per_second:.2f} clips/s, {100 * result.data_fraction:.0f}% waiting for data"]
    if result.losses:
        parts.append(f"last loss {result.losses['loss']:.4f}")
    if result.metrics:
        parts.append("val " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.1f}'}" for k, v in result.metrics.items()))
    if result.unreadable_images:
        parts.append(f"{result.unreadable_images} unreadable image(s) skipped")
    if result.final_weights is not None:
        parts.append(f"weights: {result.final_weights}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)

    from ..train.config import load_config
    from ..train.trainer import DistEnv, SetupError, Trainer, TrainingDiverged

    env = DistEnv.from_env()
    _setup_logging(env.is_main)

    def fail(message: str, status: int) -> int:
        if env.is_main:
            print(f"{PROG}: error: {message}", file=sys.stderr)
        return status

    try:
        config = load_config(args.config, args.overrides)
        if args.out is not None:
            config = replace(config, runtime=replace(config.runtime, out_dir=str(args.out)))
        trainer = Trainer(config, resume=args.resume, init_from=args.init_from, env=env)
    except (FileNotFoundError, ValueError) as error:  # ConfigError, SetupError, CheckpointError, bad class lists
        return fail(str(error), 2)
    try:
        result = trainer.fit()
    except TrainingDiverged as error:
        return fail(str(error), 1)
    except SetupError as error:
        return fail(str(error), 2)
    except KeyboardInterrupt:
        return fail(f"interrupted at iteration {trainer.step}; continue with --resume (from the latest checkpoint "
                    f"in {config.runtime.out_dir})", 130)
    finally:
        trainer.close()
    if env.is_main:
        print(f"{PROG}: {summary_line(result, config.model.variant)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
