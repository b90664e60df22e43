"""``write_vspw``: synthetic videos written in the VSPW 480p layout that ``VSPWDataset`` reads."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ...atomic_files import atomic_write
from ...classes import CLASS_LISTS_DIR
from .config import SyntheticConfig
from .drive import SyntheticDrive, keep_heap


def video_name(seed: int) -> str:
    """The folder name of the video of ``seed``."""
    return f"synthetic_{seed:05d}"


def _write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    atomic_write(path, lambda temporary: Path(temporary).write_bytes(data))


def _encode(extension: str, array: np.ndarray, params: list[int]) -> bytes:
    import cv2

    ok, data = cv2.imencode(extension, array, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {extension} image")
    return data.tobytes()


def _write_video(job: tuple) -> tuple[str, int, int]:
    """Writes one video's frames and masks; returns (split, frames written, frames dropped)."""
    import cv2

    root, split, seed, config, quality = job
    folder = Path(root) / "data" / video_name(seed)
    if folder.exists():
        shutil.rmtree(folder)  # an overwritten video must not keep frames of an earlier run
    (folder / "origin").mkdir(parents=True)
    (folder / "mask").mkdir()
    drive = SyntheticDrive(config, seed)
    written = 0
    for frame in drive:
        stem = f"{frame.index:08d}"
        _write_bytes(folder / "origin" / f"{stem}.jpg", _encode(
            ".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]))
        mask = frame.labels + np.uint8(1)  # train id + 1; 255 (ignore) wraps to 0
        _write_bytes(folder / "mask" / f"{stem}.png", _encode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1]))
        written += 1
    return split, written, len(drive) - written


def _worker_setup() -> None:
    """Initialiser of the worker processes: one OpenCV thread each, and glibc keeps the freed heap.

    ``keep_heap`` changes the allocator of the whole process, so it is called here, in processes that
    only render and write frames, and never by ``SyntheticDrive`` in the caller's process.
    """
    import cv2

    cv2.setNumThreads(1)
    keep_heap()


def write_vspw(root: str | os.PathLike, *, videos: dict[str, list[int]], config: SyntheticConfig = SyntheticConfig(),
               progress: bool = True, workers: int = 1, overwrite: bool = False, jpeg_quality: int = 95) -> dict:
    """Writes one synthetic video per seed in the VSPW 480p layout that ``VSPWDataset`` reads.

    Layout: ``<root>/<split>.txt`` (video names), ``<root>/data/<video>/origin/<index:08d>.jpg``,
    ``<root>/data/<video>/mask/<index:08d>.png`` (grey PNG, train id + 1, 0 = ignore), dropped
    frames left out; ``<root>/classes.yaml`` (the Cityscapes class list) and ``<root>/synthetic.yaml``
    (config, seeds and JPEG quality, to reproduce the set). Every file is written atomically, and the
    split lists last, so an interrupted run is not a readable data set. ``root`` must be empty or
    absent unless ``overwrite`` (which replaces the folders and split lists of the videos written).

    Args:
        videos: split name (``train``, ``val``, ``test``) -> list of seeds (integers >= 0, unique overall).
        workers: processes generating videos in parallel (1: in this process). More use the ``spawn``
            start method, so a script calling this needs the usual ``if __name__ == "__main__":`` guard;
            they call ``keep_heap``, which a process generating with ``workers=1`` may call itself.
        jpeg_quality: JPEG quality of the frames (1..100).

    Returns: ``{"root", "frames": {split: written}, "dropped": {split: n}, "videos": {split: n},
    "seconds", "frames_per_second"}``.
    """
    import yaml
    from tqdm.auto import tqdm

    root = Path(root)
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    if not isinstance(videos, dict) or not videos:
        raise ValueError("videos must map at least one split name to a list of seeds")
    seen: dict[int, str] = {}
    for split, seeds in videos.items():
        if split not in ("train", "val", "test"):
            raise ValueError(f"split names must be train, val or test, got {split!r}")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise ValueError(f"seeds must be integers >= 0, got {seed!r} in split {split!r}")
            if int(seed) in seen:
                raise ValueError(f"seed {seed} is listed twice (splits {seen[int(seed)]!r} and {split!r})")
            seen[int(seed)] = split
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an integer in 1..100, got {jpeg_quality!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"output folder {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {root} is not empty; choose an empty folder or allow overwriting")
    (root / "data").mkdir(parents=True, exist_ok=True)
    for name in [f"{split}.txt" for split in videos] + ["synthetic.yaml"]:
        (root / name).unlink(missing_ok=True)  # until the new videos are complete, their splits are not listed
    jobs = [(str(root), split, int(seed), config, jpeg_quality) for split, seeds in videos.items() for seed in seeds]
    summary = {"root": str(root), "frames": {split: 0 for split in videos}, "dropped": {split: 0 for split in videos},
               "videos": {split: len(seeds) for split, seeds in videos.items()}}
    began = time.perf_counter()
    bar = tqdm(total=len(jobs) * config.num_frames, unit="frame", desc="synthetic videos", disable=not progress)
    with contextlib.ExitStack() as stack:
        if min(workers, len(jobs)) > 1:  # fresh interpreters: no threads or locks inherited from the caller
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
                min(workers, len(jobs)), initializer=_worker_setup))
            results = pool.imap_unordered(_write_video, jobs)
        else:
            results = map(_write_video, jobs)
        for split, written, dropped in results:
            summary["frames"][split] += written
            summary["dropped"][split] += dropped
            bar.update(written + dropped)
    bar.close()
    _write_bytes(root / "classes.yaml", (CLASS_LISTS_DIR / "cityscapes.yaml").read_bytes())
    record = {"generator": "sdcpc_core.data.synthetic", "jpeg_quality": jpeg_quality,
              "seeds": {split: [int(s) for s in seeds] for split, seeds in videos.items()}, "config": config.to_dict()}
    _write_bytes(root / "synthetic.yaml", yaml.safe_dump(record, sort_keys=False).encode("utf-8"))
    for split, seeds in videos.items():
        _write_bytes(root / f"{split}.txt", "".join(f"{video_name(int(s))}\n" for s in seeds).encode("utf-8"))
    summary["seconds"] = time.perf_counter() - began
    summary["frames_per_second"] = sum(summary["frames"].values()) / max(summary["seconds"], 1e-9)
    return summary


__all__ = ["video_name", "write_vspw"]
