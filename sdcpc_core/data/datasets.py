"""Dataset readers that return clips: reference frames then the target (target last).

Every reader exposes the same interface:

* ``len(ds)`` and ``ds[i]``: the i-th labelled target, as a :class:`Clip` whose references follow
  :func:`sdcpc_core.data.clips.reference_indices` (clamped at the video start);
* ``ds.clip(video, target, reverse=False)``: any target of any video, for
  :class:`~sdcpc_core.data.clips.ClipSampler` (build one with ``ds.make_sampler(...)``);
* ``ds.video_names``, ``ds.video_lengths``, ``ds.labelled`` (per video, the frame positions that
  have a label).

Frames are ``(H, W, 3)`` uint8 **RGB**; labels ``(H, W)`` uint8 train ids, 255 = ignore.
An image that exists but cannot be decoded raises :class:`UnreadableImageError` (naming the file)
so a trainer can skip the sample and count it; a missing root, split or listed video raises
``FileNotFoundError`` with one sentence saying what was expected.

Layouts
-------
**VSPW (480p release)**::

    <root>/train.txt | val.txt | test.txt      one video name per line
    <root>/data/<video>/origin/<frame>.jpg      all frames of the video
    <root>/data/<video>/mask/<frame>.png        labels (palette or grey PNG), same stem

  Label values: 0 ("others") and 255 -> 255 (ignore), 1..124 -> 0..123, anything else -> 255
  (the ``reduce_zero_label`` convention of the VSPW peers). Frames of a video are the sorted
  ``origin`` files; a frame is a target when its mask exists (the public down-scaling script only
  writes masks that exist, so ``origin`` may hold more frames than ``mask``). The test split has
  no masks: its targets are then every frame and the label is all 255.

**Cityscapes sequences**::

    <root>/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame:06d>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame:06d>_gtFine_labelIds.png

  One target per ``gtFine`` label (the 20th frame of its 30-frame snippet); each snippet is one
  "video" of 30 positions, frame numbers ``f-19 .. f+10``, the target at position 19. labelIds are
  mapped to the 19 train ids with the official table, everything else to 255. A reference file
  that is missing is replaced by the nearest existing frame between it and the target.

**CamVid (SegNet layout)**::

    <root>/{train,val,test}/<seq>_<num>.png         labelled frames, e.g. 0001TP_006690.png,
                                                     Seq05VD_f00660.png
    <root>/{train,val,test}annot/<same name>.png    labels 0..10, 11 = void
    <root>/frames/<seq>/<seq>_<num>.png  (optional) the 30 Hz video frames of each sequence;
                                                     ``<num>.png`` and ``.jpg`` files work too

  The sequence is the file-name part before the last ``_``; the frame number is the trailing
  digits (an ``f`` before them is allowed). Labels 0..10 are the train ids, 11 (void) and above
  -> 255. With the ``frames`` folder, a sequence's frames are its files there (plus any labelled
  frame missing from it) sorted by number, and references are taken at ``-9, -6, -3`` positions.
  Without it, every labelled frame is its own one-frame video, so it is its own reference: a
  warning says so once per reader.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .clips import DEFAULT_OFFSETS, ClipSampler, reference_indices

__all__ = ['Clip', 'UnreadableImageError', 'VSPWDataset', 'CityscapesSequenceDataset',
           'CamVidDataset', 'read_rgb', 'read_label', 'CITYSCAPES_LABEL_TO_TRAIN', 'IGNORE']

IGNORE = 255


class UnreadableImageError(OSError):
    """An image file exists (or was listed) but could not be decoded; ``path`` names it."""

    def __init__(self, path: str, reason: str = 'could not be decoded'):
        self.path = path
        super().__init__(f'image file {path!r} {reason}')


@dataclass
class Clip:
    """One clip: ``frames`` (T RGB uint8 ``(H, W, 3)``, target last), ``label`` the target's
    ``(H, W)`` uint8 train ids, ``labels`` per-frame labels when requested (``None`` entries for
    unlabelled frames), ``meta``: ``dataset``, ``video``, ``frame_indices`` (positions in the
    video, target last), ``target`` (its position), ``paths``, ``reversed``."""

    frames: list
    label: np.ndarray
    meta: dict = field(default_factory=dict)
    labels: list | None = None


# ---------------------------------------------------------------------------------- file reading

def read_rgb(path: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB; ``FileNotFoundError`` if absent, ``UnreadableImageError`` if not decodable."""
    import cv2

    if not os.path.isfile(path):
        raise FileNotFoundError(f'image file {path!r} does not exist')
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise UnreadableImageError(path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: str) -> np.ndarray:
    """``(H, W)`` uint8 label values as stored (palette PNGs give their indices, not colours)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'label file {path!r} does not exist')
    try:
        from PIL import Image
    except ImportError:  # OpenCV reads grey PNGs; palette PNGs would come back as colours
        import cv2

        data = np.fromfile(path, dtype=np.uint8)
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if arr is None:
            raise UnreadableImageError(path) from None
        if arr.ndim != 2:
            raise UnreadableImageError(path, 'is not a single-channel label image (palette PNGs need Pillow)') from None
        return arr.astype(np.uint8)
    try:
        with Image.open(path) as im:
            if im.mode not in ('L', 'P', 'I', 'I;16', 'I;16B', 'I;16L'):
                raise UnreadableImageError(path, f'is a {im.mode} image, not a single-channel label image')
            arr = np.array(im)
    except UnreadableImageError:
        raise
    except Exception as exc:  # PIL raises several types for corrupt files
        raise UnreadableImageError(path, f'could not be decoded ({exc})') from exc
    if arr.ndim != 2:
        raise UnreadableImageError(path, 'is not a single-channel label image')
    return np.clip(arr, 0, 255).astype(np.uint8) if arr.dtype != np.uint8 else arr


def _lut(pairs: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for k, v in pairs.items():
        lut[k] = v
    return lut


_VSPW_LUT = _lut({v: v - 1 for v in range(1, 125)})
_CAMVID_LUT = _lut({v: v for v in range(11)})

# Official cityscapesScripts table: labelId -> trainId for the 19 evaluated classes.
CITYSCAPES_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                             23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
_CITYSCAPES_LUT = _lut(CITYSCAPES_LABEL_TO_TRAIN)


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f'{what} not found: expected the folder {path!r}')


# ---------------------------------------------------------------------------------- base reader

class _ClipReader:
    """Shared clip logic. Subclasses fill ``_videos``: per video a dict with ``name``,
    ``frames`` (list of paths), ``labels`` (dict position -> label path) and optionally
    ``targets`` (positions that are targets; default the label positions)."""

    dataset_name = 'clips'
    num_classes = 0

    def __init__(self, offsets: Sequence[int] = DEFAULT_OFFSETS, all_labels: bool = False):
        self.offsets = tuple(int(o) for o in offsets)
        self.all_labels = bool(all_labels)
        self._videos: list[dict] = []
        self._index: list[tuple[int, int]] = []

    def _build_index(self) -> None:
        self._index = [(v, t) for v, vid in enumerate(self._videos)
                       for t in vid.get('targets', sorted(vid['labels']))]

    # -- sizes -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    @property
    def video_names(self) -> list[str]:
        return [v['name'] for v in self._videos]

    @property
    def video_lengths(self) -> list[int]:
        return [len(v['frames']) for v in self._videos]

    @property
    def labelled(self) -> list[list[int]]:
        return [list(v.get('targets', sorted(v['labels']))) for v in self._videos]

    def make_sampler(self, p_start: float = 0.1, p_reverse: float = 0.0) -> ClipSampler:
        return ClipSampler(self.video_lengths, self.offsets, self.labelled, p_start, p_reverse)

    # -- reading -----------------------------------------------------------------------------
    def _frame_path(self, video: dict, pos: int, target: int) -> str:
        return video['frames'][pos]

    def _map_label(self, raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _read_target_label(self, video: dict, pos: int, like: np.ndarray) -> np.ndarray:
        path = video['labels'].get(pos)
        if path is None:  # unlabelled split (e.g. VSPW test): all ignore
            return np.full(like.shape[:2], IGNORE, dtype=np.uint8)
        return self._map_label(read_label(path))

    def clip(self, video: int, target: int, reverse: bool = False) -> Clip:
        vid = self._videos[video]
        refs = reference_indices(target, self.offsets, len(vid['frames']), reverse=reverse)
        positions = [*refs, target]
        paths = [self._frame_path(vid, p, target) for p in positions]
        cache: dict[str, np.ndarray] = {}
        frames = []
        for p in paths:
            if p not in cache:
                cache[p] = read_rgb(p)
            frames.append(cache[p])
        label = self._read_target_label(vid, target, frames[-1])
        labels = None
        if self.all_labels:
            labels = [None if p not in vid['labels'] else
                      (label if p == target else self._map_label(read_label(vid['labels'][p])))
                      for p in positions]
        meta = {'dataset': self.dataset_name, 'video': vid['name'], 'frame_indices': positions,
                'target': target, 'paths': paths, 'reversed': bool(reverse)}
        return Clip(frames=frames, label=label, meta=meta, labels=labels)

    def __getitem__(self, i: int) -> Clip:
        if not -len(self) <= i < len(self):
            raise IndexError(f'index {i} out of range for {len(self)} clips')
        video, target = self._index[i]
        return self.clip(video, target)


# ---------------------------------------------------------------------------------- VSPW

class VSPWDataset(_ClipReader):
    """VSPW 480p clips (124 classes); see the module docstring for the layout.

    Args:
        root: the ``VSPW_480p`` folder.
        split: ``train``, ``val`` or ``test`` (reads ``<root>/<split>.txt``).
        offsets: reference offsets.
        all_labels: also return each frame's label in ``Clip.labels`` (for per-frame losses).
    """

    dataset_name = 'vspw'
    num_classes = 124

    def __init__(self, root: str, split: str = 'train', offsets: Sequence[int] = DEFAULT_OFFSETS,
                 all_labels: bool = False):
        super().__init__(offsets, all_labels)
        self.root, self.split = root, split
        _require_dir(root, 'VSPW root')
        split_file = os.path.join(root, f'{split}.txt')
        if not os.path.isfile(split_file):
            raise FileNotFoundError(
                f'VSPW split list not found: expected {split_file!r} with one video name per line '
                f'(train.txt, val.txt or test.txt)')
        with open(split_file, encoding='utf-8') as f:
            names = [line.strip() for line in f if line.strip() and not line.startswith('.')]
        for name in names:
            vdir = os.path.join(root, 'data', name)
            origin = os.path.join(vdir, 'origin')
            _require_dir(origin, f'frames of VSPW video {name!r} listed in {split}.txt')
            frames = sorted(n for n in os.listdir(origin)
                            if not n.startswith('.') and n.lower().endswith(('.jpg', '.jpeg', '.png')))
            mask_dir = os.path.join(vdir, 'mask')
            labels = {}
            if os.path.isdir(mask_dir):
                for pos, fname in enumerate(frames):
                    mpath = os.path.join(mask_dir, os.path.splitext(fname)[0] + '.png')
                    if os.path.isfile(mpath):
                        labels[pos] = mpath
            video = {'name': name, 'frames': [os.path.join(origin, n) for n in frames], 'labels': labels}
            if not labels:
                video['targets'] = list(range(len(frames)))
            if frames:
                self._videos.append(video)
        self._build_index()

    def _map_label(self, raw: np.ndarray) -> np.ndarray:
        return _VSPW_LUT[raw]


# ---------------------------------------------------------------------------------- Cityscapes

_CS_LABEL_RE = re.compile(r'^(?P<city>.+)_(?P<seq>\d+)_(?P<frame>\d+)_gtFine_labelIds\.png$')


class CityscapesSequenceDataset(_ClipReader):
    """Cityscapes ``leftImg8bit_sequence`` clips around the ``gtFine`` labelled frames (19 classes).

    Args:
        root: folder holding ``leftImg8bit_sequence`` and ``gtFine``.
        split: ``train``, ``val`` or ``test``.
        offsets: reference offsets (frames before the target, at 17 Hz).
    """

    dataset_name = 'cityscapes'
    num_classes = 19
    SNIPPET = 30
    LABELLED_POS = 19  # the 20th frame of each snippet

    def __init__(self, root: str, split: str = 'train', offsets: Sequence[int] = DEFAULT_OFFSETS,
                 all_labels: bool = False):
        super().__init__(offsets, all_labels)
        self.root, self.split = root, split
        _require_dir(root, 'Cityscapes root')
        seq_dir = os.path.join(root, 'leftImg8bit_sequence', split)
        gt_dir = os.path.join(root, 'gtFine', split)
        _require_dir(seq_dir, f'Cityscapes sequence frames of split {split!r}')
        _require_dir(gt_dir, f'Cityscapes gtFine labels of split {split!r}')
        for city in sorted(os.listdir(gt_dir)):
            cdir = os.path.join(gt_dir, city)
            if not os.path.isdir(cdir):
                continue
            for fname in sorted(os.listdir(cdir)):
                m = _CS_LABEL_RE.match(fname)
                if not m:
                    continue
                frame = int(m.group('frame'))
                first = frame - self.LABELLED_POS
                prefix = os.path.join(seq_dir, city, f'{m.group("city")}_{m.group("seq")}_')
                frames = [f'{prefix}{max(first + k, 0):06d}_leftImg8bit.png' for k in range(self.SNIPPET)]
                self._videos.append({
                    'name': f'{m.group("city")}_{m.group("seq")}_{frame:06d}', 'frames': frames,
                    'labels': {self.LABELLED_POS: os.path.join(cdir, fname)}})
        self._build_index()

    def _frame_path(self, video: dict, pos: int, target: int) -> str:
        # a missing reference is replaced by the nearest existing frame towards the target
        step = 1 if pos <= target else -1
        for p in range(pos, target + step, step):
            if os.path.isfile(video['frames'][p]):
                return video['frames'][p]
        return video['frames'][target]

    def _map_label(self, raw: np.ndarray) -> np.ndarray:
        return _CITYSCAPES_LUT[raw]


# ---------------------------------------------------------------------------------- CamVid

_CAMVID_NAME_RE = re.compile(r'^(?P<seq>.+)_f?(?P<num>\d+)$')
_CAMVID_FRAME_RE = re.compile(r'^(?:.*_)?f?(?P<num>\d+)$')
_IMAGE_EXT = ('.png', '.jpg', '.jpeg')


class CamVidDataset(_ClipReader):
    """CamVid clips (11 classes) in the SegNet layout, references from an optional ``frames``
    folder of the 30 Hz videos; see the module docstring.

    Args:
        root: folder holding ``train``, ``trainannot``, ``val``, ... (and optionally ``frames``).
        split: ``train``, ``val`` or ``test``.
        offsets: reference offsets in frames of the ``frames`` folder.
        frames_dir: the video-frame folder (default ``<root>/frames``; used when it exists).
    """

    dataset_name = 'camvid'
    num_classes = 11

    def __init__(self, root: str, split: str = 'train', offsets: Sequence[int] = DEFAULT_OFFSETS,
                 all_labels: bool = False, frames_dir: str | None = None):
        super().__init__(offsets, all_labels)
        self.root, self.split = root, split
        _require_dir(root, 'CamVid root')
        img_dir = os.path.join(root, split)
        ann_dir = os.path.join(root, f'{split}annot')
        if not os.path.isdir(img_dir) or not os.path.isdir(ann_dir):
            raise FileNotFoundError(
                f'CamVid split {split!r} not found: expected the folders {img_dir!r} and {ann_dir!r}')
        frames_dir = frames_dir or os.path.join(root, 'frames')
        self.has_frames = os.path.isdir(frames_dir)
        labelled: dict[str, dict[int, tuple[str, str]]] = {}
        for fname in sorted(os.listdir(img_dir)):
            stem, ext = os.path.splitext(fname)
            if ext.lower() not in _IMAGE_EXT:
                continue
            ann = os.path.join(ann_dir, stem + '.png')
            if not os.path.isfile(ann):
                continue
            m = _CAMVID_NAME_RE.match(stem)
            if not m:
                raise ValueError(f'CamVid file name {fname!r} is not <sequence>_<frame number>')
            labelled.setdefault(m.group('seq'), {})[int(m.group('num'))] = (os.path.join(img_dir, fname), ann)
        if not self.has_frames:
            if labelled:
                warnings.warn(
                    f'CamVid: no video-frame folder {frames_dir!r}; every labelled frame is used as '
                    f'its own reference frames (clips of one repeated image)', stacklevel=2)
            for items in labelled.values():
                for _num, (img, ann) in sorted(items.items()):
                    self._videos.append({'name': os.path.splitext(os.path.basename(img))[0],
                                         'frames': [img], 'labels': {0: ann}})
        else:
            for seq, items in labelled.items():
                numbered: dict[int, str] = {}
                sdir = os.path.join(frames_dir, seq)
                if os.path.isdir(sdir):
                    for fname in os.listdir(sdir):
                        stem, ext = os.path.splitext(fname)
                        m = _CAMVID_FRAME_RE.match(stem)
                        if ext.lower() in _IMAGE_EXT and m:
                            numbered[int(m.group('num'))] = os.path.join(sdir, fname)
                missing = [n for n in items if n not in numbered]
                if missing:
                    warnings.warn(f'CamVid: {len(missing)} labelled frame(s) of sequence {seq!r} are '
                                  f'not in {sdir!r}; they are used without neighbours there', stacklevel=2)
                for num, (img, _) in items.items():
                    numbered[num] = img  # the labelled image itself is the target frame
                nums = sorted(numbered)
                pos_of = {n: i for i, n in enumerate(nums)}
                self._videos.append({'name': seq, 'frames': [numbered[n] for n in nums],
                                     'labels': {pos_of[n]: ann for n, (_, ann) in items.items()}})
        self._build_index()

    def _map_label(self, raw: np.ndarray) -> np.ndarray:
        return _CAMVID_LUT[raw]
