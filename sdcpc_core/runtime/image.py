"""Camera images in, network tensors through, label maps out: the streaming runtime's image side.

``to_rgb(image, encoding)`` turns an H x W x C uint8 numpy image in one of ``ENCODINGS`` (rgb8, bgr8,
rgba8, bgra8, mono8) into H x W x 3 RGB. ``ImageAdapter`` does the rest for one network input size
``input_size`` (H, W):

* ``to_network(rgb)``: resize with OpenCV ``cv2.resize`` (``INTER_LINEAR``) either keeping the
  aspect ratio and padding (``resize_mode="letterbox"``, the default: the image is scaled to fit
  and placed at the top left; the bottom / right remainder is zero after normalisation, i.e. the
  ImageNet mean colour, the same padding the model applies up to a multiple of 32) or stretching
  (``resize_mode="stretch"``); normalise with the ImageNet mean and standard deviation. The network
  input therefore always has one static size, whatever the camera. OpenCV is used because resizing
  the uint8 image before converting it to float is several times cheaper than
  ``torch.nn.functional.interpolate`` on a float tensor (on one CPU core, 720x1280 -> 480x853: about
  1.5 ms against 10-13 ms; 3.3 ms for torch on uint8).
* ``to_labels(logits, camera_hw)``: the class with the highest logit and its softmax probability
  (``confidence``), at the camera resolution (``output_resolution="camera"``: nearest-neighbour
  from the network's 1/4-resolution argmax, or with ``upsample_logits=True`` bilinear logits at
  camera size before the argmax) or at the network's output resolution (``"network"``: the
  1/4-resolution logits of the image area, the letterbox padding cropped off).

The index maps of each camera size are built once and kept (the GPU rule: constant tensors once
per input size, not per frame).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

try:  # imported here so that a missing OpenCV is reported when a segmenter is built, not on import
    import cv2
except ImportError:  # pragma: no cover - depends on the installation
    cv2 = None  # type: ignore[assignment]  # require_opencv checks for None before any use

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
OUTPUT_RESOLUTIONS = ("camera", "network")
RESIZE_MODES = ("letterbox", "stretch")

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def require_opencv(user: str) -> None:
    """Raises ``ImportError`` naming ``user`` when OpenCV (needed to resize images) is not installed."""
    if cv2 is None:
        raise ImportError(f"{user} needs OpenCV: pip install opencv-python-headless")


def check_encoding(encoding: str) -> None:
    """Raises ``ValueError`` for an encoding not in ``ENCODINGS``."""
    if encoding not in _CHANNELS:
        raise ValueError(f"unknown image encoding {encoding!r}; accepted encodings: {', '.join(ENCODINGS)}")


def to_rgb(image, encoding: str = "rgb8") -> np.ndarray:
    """H x W x C uint8 array in ``encoding`` -> H x W x 3 uint8 RGB (C-contiguous); ``ValueError`` if invalid."""
    check_encoding(encoding)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected the image as a numpy array (H x W x C uint8), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image for encoding {encoding}, got dtype {image.dtype}")
    channels = _CHANNELS[encoding]
    if image.ndim == 2 and channels == 1:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] != channels:
        layout = "H x W or H x W x 1" if channels == 1 else f"H x W x {channels}"
        raise ValueError(f"encoding {encoding} needs an image of shape {layout}, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"the image is empty (shape {image.shape}); expected at least 1 x 1 pixels")
    if encoding == "rgb8":
        rgb = image
    elif encoding == "bgr8" or encoding == "bgra8":
        rgb = image[:, :, 2::-1]
    elif encoding == "rgba8":
        rgb = image[:, :, :3]
    else:  # mono8
        rgb = np.broadcast_to(image, (*image.shape[:2], 3))
    return np.ascontiguousarray(rgb)


def _network_layout(camera_hw: tuple[int, int], input_hw: tuple[int, int], mode: str) -> tuple[int, int]:
    """Size (h, w) of the image area inside the network input."""
    if mode == "stretch":
        return input_hw
    scale = min(input_hw[0] / camera_hw[0], input_hw[1] / camera_hw[1])
    return (min(input_hw[0], max(1, round(camera_hw[0] * scale))),
            min(input_hw[1], max(1, round(camera_hw[1] * scale))))


class ImageAdapter:
    """RGB camera image -> network input, network logits -> label map, for one network input size.

    ``ImageAdapter(input_size, resize_mode, output_resolution, upsample_logits, device, label_dtype)``:
    the settings of the same names in ``StreamingConfig``; ``label_dtype`` is the numpy dtype of the
    label maps (uint8, or uint16 for more than 255 classes). See the module docstring.
    """

    def __init__(self, input_size: tuple[int, int], resize_mode: str = "letterbox", output_resolution: str = "camera",
                 upsample_logits: bool = False, device: str | torch.device = "cpu", label_dtype=np.uint8) -> None:
        require_opencv("ImageAdapter")
        self.input_size = input_size
        self.resize_mode = resize_mode
        self.output_resolution = output_resolution
        self.upsample_logits = upsample_logits
        self.device = torch.device(device)
        self.label_dtype = label_dtype
        self._scale = (1.0 / (255.0 * torch.tensor(IMAGENET_STD))).view(3, 1, 1).to(self.device)
        self._shift = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1).to(self.device)
        self._maps: dict[tuple[int, int], tuple] = {}  # camera size -> (area, nearest indices / grid)

    def to_network(self, rgb: np.ndarray) -> torch.Tensor:
        """H x W x 3 uint8 RGB -> the network input ``(1, 3, *input_size)`` float32 on the device."""
        h, w = self._layout(rgb.shape[:2])[0]
        if rgb.shape[:2] != (h, w):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        pixels = torch.from_numpy(rgb).to(self.device, non_blocking=True).permute(2, 0, 1)
        height, width = self.input_size
        network_input = torch.zeros(1, 3, height, width, device=self.device)
        torch.addcmul(self._shift, pixels, self._scale, out=network_input[0, :, :h, :w])
        return network_input

    def _layout(self, camera_hw: tuple[int, int]) -> tuple:
        """Per camera size: image area in the network input, and the index maps / grid of ``to_labels``."""
        layout = self._maps.get(camera_hw)
        if layout is None:
            area = _network_layout(camera_hw, self.input_size, self.resize_mode)
            logits_hw = (math.ceil(area[0] / 4), math.ceil(area[1] / 4))
            nearest, normalised = [], []
            for camera, image, logit in zip(camera_hw, area, logits_hw):
                # camera pixel centre -> network coordinate (pixel edges at integers) -> logits coordinate
                position = (torch.arange(camera, dtype=torch.float64) + 0.5) * (image / camera) / 4.0
                nearest.append(position.floor().clamp_(0, logit - 1).long().to(self.device))
                normalised.append((2.0 * position / logit - 1.0).float())  # grid_sample, align_corners=False
            grid = None
            if self.upsample_logits:  # (1, H, W, 2) sampling positions (x, y) for grid_sample
                grid = torch.stack(torch.meshgrid(*normalised, indexing="ij")[::-1], dim=-1)[None].to(self.device)
            layout = (area, logits_hw, nearest, grid)
            if len(self._maps) > 8:
                self._maps.clear()
            self._maps[camera_hw] = layout
        return layout

    def to_labels(self, logits: torch.Tensor, camera_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``(1, K, ceil(H/4), ceil(W/4))`` of an image of size ``camera_hw`` -> (labels, confidence)."""
        _, (lh, lw), (rows, cols), grid = self._layout(camera_hw)
        logits = logits[0, :, :lh, :lw].float()  # (K, lh, lw): the image area
        camera = self.output_resolution == "camera"
        if camera and grid is not None:
            logits = F.grid_sample(logits[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
            camera = False  # already at camera size
        top, labels = logits.max(dim=0)
        confidence = torch.exp(logits - top).sum(dim=0).reciprocal_()
        labels = labels.to(torch.uint8 if self.label_dtype == np.uint8 else torch.int32)
        if camera:
            labels = labels.index_select(0, rows).index_select(1, cols)
            confidence = confidence.index_select(0, rows).index_select(1, cols)
        return labels.cpu().numpy().astype(self.label_dtype, copy=False), confidence.cpu().numpy()


__all__ = ["ENCODINGS", "IMAGENET_MEAN", "IMAGENET_STD", "OUTPUT_RESOLUTIONS", "RESIZE_MODES", "ImageAdapter",
           "check_encoding", "require_opencv", "to_rgb"]
