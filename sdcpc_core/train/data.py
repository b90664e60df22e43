"""Training data: an indexed stream of augmented clips, split over processes and loader workers.

Sample ``i`` of a run is drawn by a ``numpy.random.Generator`` seeded with ``(seed, i)``: the
:class:`~sdcpc_core.data.ClipSampler` picks the clip (with its ``p_start`` / ``p_reverse`` draws),
the reader loads it and :class:`~sdcpc_core.data.transforms.ClipTrainTransform` augments it with
the same generator. A sample therefore depends on nothing but the seed and its index: not on the
process, the loader worker that builds it or the order in which workers finish. Optimiser step
``s`` consumes the indices ``start + s x batch_size ... + batch_size - 1`` (``batch_size`` global),
and :class:`ClipStreamSampler` (a ``DistributedSampler``) deals them to the processes in turn, so

* a run resumed at step ``s`` continues with exactly the clips an uninterrupted run would see;
* ``N`` processes with one micro-batch each see the same global batch as one process that
  accumulates ``N`` micro-batches;
* no two workers or processes ever build the same sample.

A clip with an unreadable image (``UnreadableImageError``) is replaced by another draw of the same
generator; the skipped paths travel with the batch (``unreadable``) so the trainer can warn and
count them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..classes import ClassList
from ..data.clips import ClipSampler
from ..data.datasets import CamVidDataset, CityscapesSequenceDataset, UnreadableImageError, VSPWDataset
from ..data.transforms import ClipTrainTransform
from .config import DataSection

READERS = {"vspw": VSPWDataset, "cityscapes": CityscapesSequenceDataset, "camvid": CamVidDataset}
MAX_DRAWS = 100  # clips drawn in a row before a sample gives up on unreadable images


def open_reader(data: DataSection, split: str, all_labels: bool = False):
    """The dataset reader of ``data.dataset`` for ``split`` (``FileNotFoundError`` naming what is missing)."""
    return READERS[data.dataset](data.root, split, offsets=data.offsets, all_labels=all_labels)


def resolve_class_list(data: DataSection) -> ClassList:
    """``data.classes`` (a shipped name or a YAML path); else ``<root>/classes.yaml``; else the dataset's list."""
    if data.classes:
        return ClassList.load(data.classes)
    local = Path(data.root) / "classes.yaml"
    if local.is_file():
        return ClassList.from_yaml(local)
    return ClassList.shipped(data.dataset)


def build_transform(data: DataSection) -> ClipTrainTransform:
    return ClipTrainTransform(crop_size=data.crop_size, base_scale=data.base_scale, ratio_range=data.ratio_range,
                              cat_max_ratio=data.cat_max_ratio, flip_prob=data.flip_prob,
                              photometric=data.photometric)


class ClipStream(Dataset):
    """Sample ``i`` -> ``{"images": (T, 3, h, w) float32, "labels": (T, h, w) int64, "unreadable": [paths]}``.

    ``labels`` holds every frame's label where the data set has one (255 elsewhere), the target last.
    """

    def __init__(self, reader, sampler: ClipSampler, transform: ClipTrainTransform, seed: int, length: int) -> None:
        self.reader = reader
        self.sampler = sampler
        self.transform = transform
        self.seed = int(seed)
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        unreadable: list[str] = []
        for _ in range(MAX_DRAWS):
            pick = self.sampler.sample(rng)
            try:
                clip = self.reader.clip(pick.video, pick.target, reverse=pick.reversed)
            except UnreadableImageError as error:
                unreadable.append(error.path)
                continue
            labels = list(clip.labels) if clip.labels is not None else [None] * len(clip.frames)
            labels[-1] = clip.label  # the target's, also for a split without masks (all 255)
            out = self.transform(clip.frames, labels, rng)
            return {"images": out["images"], "labels": out["labels"], "unreadable": unreadable}
        raise RuntimeError(f"{MAX_DRAWS} clips in a row had an unreadable image (the last: {unreadable[-1]}); "
                           f"check the data set")


class ClipStreamSampler(DistributedSampler):
    """Deals the sample indices ``start, start + 1, ...`` to ``num_replicas`` processes in turn
    (process ``rank`` gets ``start + rank + k x num_replicas``); no shuffling, no padding."""

    def __init__(self, dataset: ClipStream, num_replicas: int, rank: int, start: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.start = int(start)

    def __iter__(self):
        return iter(range(self.start + self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.start + self.rank, len(self.dataset), self.num_replicas))


def collate_clips(samples: list[dict]) -> dict:
    """Stacks samples: ``images (B, T, 3, h, w)``, ``labels (B, T, h, w)``, ``unreadable`` (all paths)."""
    return {"images": torch.stack([s["images"] for s in samples]),
            "labels": torch.stack([s["labels"] for s in samples]),
            "unreadable": [path for s in samples for path in s["unreadable"]]}


def build_loader(stream: ClipStream, micro_batch: int, world_size: int, rank: int, start: int, num_workers: int,
                 pin_memory: bool) -> DataLoader:
    """Loader of this process's micro-batches from sample ``start`` on (in order; workers prefetch).

    With workers, OpenCV runs single-threaded (each worker is a process of its own; OpenCV's pool would put
    more threads than cores to work). It is set here, in this process: a forked worker must not touch the
    pool it inherited (``cv2.setNumThreads`` there waits forever on the parent's pool threads).
    """
    if num_workers:
        import cv2

        cv2.setNumThreads(0)
    sampler = ClipStreamSampler(stream, world_size, rank, start)
    return DataLoader(stream, batch_size=micro_batch, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_clips, pin_memory=pin_memory,
                      # the workers' base seed comes from here, not from the global RNG the trainer seeds per step
                      generator=torch.Generator().manual_seed(stream.seed))


__all__ = ["ClipStream", "ClipStreamSampler", "READERS", "build_loader", "build_transform", "collate_clips",
           "open_reader", "resolve_class_list"]
