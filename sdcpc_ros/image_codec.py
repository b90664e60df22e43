"""``sensor_msgs`` images <-> numpy arrays, without cv_bridge and without rclpy.

The functions are duck-typed on the message fields, so they work on rclpy messages (``data`` is an
``array.array('B')``), on the messages the ``rosbags`` library deserialises (``data`` is a numpy
uint8 array) and on anything else with the same field names:

* ``Image``: ``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``, ``data``;
* ``CompressedImage``: ``format``, ``data``.

Semantics follow cv_bridge: row ``r`` of an ``Image`` starts at byte ``r x step`` of ``data``
(``step`` may exceed ``width x bytes per pixel``: row padding), multi-byte values are big-endian
when ``is_bigendian`` is set, one-channel images come back as ``(H, W)`` and the others as
``(H, W, C)``, and compressed images decode to ``bgr8`` / ``mono8`` (``rgb8`` when OpenCV can decode
straight to RGB, which saves the channel swap).

Copies: ``image_to_array`` returns a strided numpy *view* of ``msg.data`` (no copy), except for
multi-byte data in the non-native byte order, which is byte-swapped once. ``compressed_to_array``
decodes once into a new array. ``array_to_image_fields`` copies the array once into the
``array.array('B')`` that rclpy messages take without a per-element check.

Bad input raises ``ImageDecodeError`` (a ``ValueError``) with a ``kind``: ``"encoding"`` (an encoding
or compressed format that is not accepted), ``"zero_size"`` (no pixels), ``"too_large"`` (more
pixels than ``max_pixels``), ``"size"`` (``data`` length or ``step`` not matching the image size),
``"corrupt"`` (compressed data that does not decode, or that the decoder reports as damaged: a
truncated JPEG with an end marker appended decodes, padded, with a "premature end" warning), and
``"stamp"`` (a header stamp whose ``nanosec`` is 1e9 or more, see ``check_stamp``).

Decoder messages: libjpeg, libpng and OpenCV print their warnings and errors on the process's
standard error, once per damaged file. ``compressed_to_array`` catches them (file descriptor 2 is
pointed at a temporary file while OpenCV decodes, under a lock; anything else written there
meanwhile, e.g. by another thread, is passed on afterwards), so nothing reaches the terminal, and
turns the ones that mean lost image data into ``"corrupt"``. Harmless ones (libpng warnings such as
a known-incorrect sRGB profile, libjpeg's "extraneous bytes before marker" that some USB cameras
cause) are dropped and the image is kept.
"""
from __future__ import annotations

import array
import os
import re
import sys
import tempfile
import threading

import numpy as np

try:  # a missing OpenCV only matters for compressed images
    import cv2
except ImportError:  # pragma: no cover - depends on the installation
    cv2 = None

ERROR_KINDS = ("encoding", "size", "zero_size", "too_large", "corrupt", "stamp")
_NS_PER_S = 1_000_000_000

# Named encodings of sensor_msgs/image_encodings.hpp: name -> (channels, numpy dtype).
_NAMED = {
    "rgb8": (3, "u1"), "bgr8": (3, "u1"), "rgba8": (4, "u1"), "bgra8": (4, "u1"), "mono8": (1, "u1"),
    "rgb16": (3, "u2"), "bgr16": (3, "u2"), "rgba16": (4, "u2"), "bgra16": (4, "u2"), "mono16": (1, "u2"),
}
_BAYER = re.compile(r"^bayer_(rggb|bggr|gbrg|grbg)(8|16)$")
_GENERIC = re.compile(r"^(8U|8S|16U|16S|32S|32F|64F)C([1-4])$")
_GENERIC_DTYPES = {"8U": "u1", "8S": "i1", "16U": "u2", "16S": "i2", "32S": "i4", "32F": "f4", "64F": "f8"}
# Encodings written by array_to_image_fields: name -> (channels, dtype).
_WRITABLE = {"mono8": (1, "u1"), "mono16": (1, "u2"), "rgb8": (3, "u1"), "bgr8": (3, "u1"), "rgba8": (4, "u1"),
             "bgra8": (4, "u1"), "32FC1": (1, "f4")}
_NATIVE_BIG_ENDIAN = sys.byteorder == "big"

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an array; ``kind`` is one of ``ERROR_KINDS``."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown ImageDecodeError kind {kind!r}; kinds: {', '.join(ERROR_KINDS)}")
        super().__init__(message)
        self.kind = kind


def encoding_layout(encoding: str) -> tuple[int, np.dtype] | None:
    """``(channels, dtype)`` of a raw ``sensor_msgs/Image`` encoding, or None if it is not decodable."""
    if encoding in _NAMED:
        channels, dtype = _NAMED[encoding]
        return channels, np.dtype(dtype)
    bayer = _BAYER.match(encoding)
    if bayer:
        return 1, np.dtype("u1" if bayer.group(2) == "8" else "u2")
    generic = _GENERIC.match(encoding)
    if generic:
        return int(generic.group(2)), np.dtype(_GENERIC_DTYPES[generic.group(1)])
    return None


def _byte_buffer(data) -> np.ndarray:
    """1-D uint8 view of a message's ``data`` (numpy array, bytes, bytearray, array.array, memoryview)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _check_pixels(height: int, width: int, max_pixels: int | None, what: str) -> None:
    if height <= 0 or width <= 0:
        raise ImageDecodeError("zero_size", f"{what} has zero size ({height} x {width} pixels); expected at least "
                                            "1 x 1 pixels")
    if max_pixels is not None and height * width > max_pixels:
        raise ImageDecodeError("too_large", f"{what} of {height} x {width} = {height * width} pixels exceeds the "
                                            f"limit of {max_pixels} pixels")


def image_to_array(msg, encodings=None, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """``sensor_msgs/Image`` -> ``(array, encoding)``: a ``(H, W)`` or ``(H, W, C)`` view of ``msg.data``.

    ``encodings``: the encodings accepted (default: every decodable one, see ``encoding_layout``);
    ``max_pixels``: the most pixels accepted (default: no limit). Multi-byte data in the
    non-native byte order is byte-swapped (the only copy). Raises ``ImageDecodeError``.
    """
    encoding = str(msg.encoding)
    layout = encoding_layout(encoding) if encodings is None or encoding in encodings else None
    if layout is None:
        accepted = ", ".join(encodings) if encodings is not None else "rgb8, bgr8, rgba8, bgra8, mono8, mono16, " \
                                                                      "rgb16, bgr16, bayer_*, 8UC1..64FC4"
        raise ImageDecodeError("encoding", f"image encoding {encoding!r} is not supported; accepted encodings: "
                                           f"{accepted}")
    channels, dtype = layout
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_pixels(height, width, max_pixels, "image")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageDecodeError("size", f"image step {step} is smaller than width x bytes per pixel = {width} x "
                                       f"{channels * dtype.itemsize} = {row_bytes} for encoding {encoding}")
    buffer = _byte_buffer(msg.data)
    if buffer.size != height * step:
        raise ImageDecodeError("size", f"image data has {buffer.size} bytes but height x step = {height} x {step} = "
                                       f"{height * step} bytes")
    big_endian = bool(msg.is_bigendian) and dtype.itemsize > 1
    typed = dtype.newbyteorder(">" if big_endian else "<") if dtype.itemsize > 1 else dtype
    shape = (height, width, channels) if channels > 1 else (height, width)
    strides = (step, channels * dtype.itemsize, dtype.itemsize)[: len(shape)]
    view = np.ndarray(shape, dtype=typed, buffer=buffer, strides=strides)
    if dtype.itemsize > 1 and big_endian != _NATIVE_BIG_ENDIAN:
        view = view.astype(dtype.newbyteorder("="))
    return view, encoding


def _jpeg_header(buffer: np.ndarray) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG's start-of-frame segment, or None if there is none."""
    data = memoryview(buffer)  # indexing gives ints, without copying the file
    position = 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            position += 2
        elif marker in _JPEG_SOF:
            return (data[position + 5] << 8 | data[position + 6], data[position + 7] << 8 | data[position + 8],
                    data[position + 9])
        else:
            length = data[position + 2] << 8 | data[position + 3]
            if length < 2:
                return None
            position += 2 + length
    return None


def _png_header(buffer: np.ndarray) -> tuple[int, int, int, int] | None:
    """(height, width, bit depth, colour type) from a PNG's IHDR chunk, or None."""
    if buffer.size < 26 or buffer[12:16].tobytes() != b"IHDR":
        return None
    header = buffer[16:26].tobytes()
    return int.from_bytes(header[4:8], "big"), int.from_bytes(header[0:4], "big"), header[8], header[9]


# What the decoders print for lost image data; other lines of theirs are harmless and only dropped.
_DAMAGE = re.compile(r"Corrupt JPEG data: (?!\d+ extraneous bytes before marker)|Premature end of JPEG file|"
                     r"libpng error")
_DECODER_LINE = re.compile(r"^(Corrupt JPEG data|Premature end of JPEG|Invalid JPEG|Bogus |Unsupported |Warning: |"
                           r"libpng (warning|error)|\[ ?(WARN|ERROR|INFO)[: ]|imread_|imdecode_)")


class _DecoderOutput:
    """Points file descriptor 2 at a temporary file while a decoder runs (``capture``), then restores it;
    the captured decoder lines are returned, anything else is written on to the real stderr."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._descriptor: int | None = None  # an unlinked temporary file, kept for the process

    def capture(self, decode):
        """``(decode(), decoder lines)``; without a usable stderr, ``decode()`` runs as it is."""
        with self._lock:
            try:
                if self._descriptor is None:
                    self._descriptor, path = tempfile.mkstemp(prefix="sdcpc-decoder-")
                    os.unlink(path)
                sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError, AttributeError):
                return decode(), []
            descriptor = self._descriptor
            try:
                os.dup2(descriptor, 2)
                try:
                    result = decode()
                finally:
                    os.dup2(saved, 2)
            finally:
                os.close(saved)
            if not os.fstat(descriptor).st_size:
                return result, []
            text = os.pread(descriptor, os.fstat(descriptor).st_size, 0).decode("utf-8", "replace")
            os.ftruncate(descriptor, 0)
            os.lseek(descriptor, 0, os.SEEK_SET)  # fd 2 shared this offset: the next capture writes from 0
        lines = text.splitlines()
        others = [line for line in lines if not _DECODER_LINE.match(line.strip())]
        if others:
            os.write(2, ("\n".join(others) + "\n").encode())
        return result, [line.strip() for line in lines if _DECODER_LINE.match(line.strip())]


_DECODER_OUTPUT = _DecoderOutput()


def _decode_quietly(buffer: np.ndarray, flag: int) -> tuple[np.ndarray | None, str | None]:
    """``cv2.imdecode`` with the decoders' messages caught: (image or None, the first message that means
    lost image data, or None)."""
    image, lines = _DECODER_OUTPUT.capture(lambda: cv2.imdecode(buffer, flag))
    return image, next((line for line in lines if _DAMAGE.search(line)), None)


def check_stamp(stamp) -> None:
    """``ImageDecodeError`` (``"stamp"``) for a ``builtin_interfaces/Time`` whose ``nanosec`` is not below
    1e9: such a time is not normalised, and reading it as sec + nanosec would put the frame up to 3.3 s
    after what ``sec`` says, so it is refused rather than guessed."""
    if not 0 <= int(stamp.nanosec) < _NS_PER_S:
        raise ImageDecodeError("stamp", f"header stamp has nanosec {int(stamp.nanosec)}, which must be below "
                                        f"1000000000 (sec {int(stamp.sec)})")


def compressed_to_array(msg, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """``sensor_msgs/CompressedImage`` (JPEG or PNG) -> ``(array, encoding)``.

    ``format`` must name ``jpeg`` / ``jpg`` / ``png`` (image_transport writes e.g. ``"rgb8; jpeg
    compressed bgr8"``) or be empty; the data's signature decides how it is decoded. The size in
    the file header is checked against ``max_pixels`` before decoding. The encoding is ``rgb8``
    (3-channel 8-bit images, when OpenCV can decode to RGB), ``bgr8``, ``bgra8``, ``mono8``,
    ``mono16``, ``bgr16`` or ``bgra16``. Raises ``ImageDecodeError``.
    """
    if cv2 is None:
        raise ImportError("decoding compressed images needs OpenCV: pip install opencv-python-headless")
    declared = str(msg.format).strip()
    lowered = declared.lower()
    if "compresseddepth" in lowered or (lowered and not re.search(r"\b(jpe?g|png)\b", lowered)):
        raise ImageDecodeError("encoding", f"compressed image format {declared!r} is not supported; accepted: jpeg "
                                           "or png (image_transport 'compressed')")
    buffer = _byte_buffer(msg.data)
    what = f"compressed image ({declared or 'no format'}, {buffer.size} bytes)"
    if buffer.size == 0:
        raise ImageDecodeError("zero_size", f"{what} has no data")
    head = buffer[:8].tobytes()
    rgb_direct = False
    if head.startswith(_JPEG_SOI):
        header = _jpeg_header(buffer)
        if header is None or _JPEG_EOI not in buffer[-16:].tobytes():
            raise ImageDecodeError("corrupt", f"{what} is not a complete JPEG file (no frame header or no end "
                                              "marker)")
        height, width, components = header
        rgb_direct = components == 3
    elif head == _PNG_SIGNATURE:
        header = _png_header(buffer)
        if header is None:
            raise ImageDecodeError("corrupt", f"{what} has no PNG image header")
        height, width, depth, colour_type = header
        rgb_direct = depth == 8 and colour_type == 2  # 8-bit RGB without alpha
    else:
        raise ImageDecodeError("corrupt", f"{what} is neither JPEG nor PNG data (unknown signature {head[:4]!r})")
    _check_pixels(height, width, max_pixels, what)
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10
    flag = rgb_flag if rgb_direct and rgb_flag is not None else cv2.IMREAD_UNCHANGED
    image, damage = _decode_quietly(buffer, flag)
    if image is None or image.size == 0:
        raise ImageDecodeError("corrupt", f"{what} could not be decoded (corrupt or truncated data"
                                          + (f": {damage})" if damage else ")"))
    if damage is not None:  # decoded, but with parts of the image made up
        raise ImageDecodeError("corrupt", f"{what} is damaged: the decoder reported '{damage}'")
    if flag == rgb_flag:
        return image, "rgb8"
    channels = 1 if image.ndim == 2 else image.shape[2]
    depth = "8" if image.dtype == np.uint8 else "16"
    names = {1: "mono", 3: "bgr", 4: "bgra"}
    if channels not in names or image.dtype not in (np.uint8, np.uint16):
        raise ImageDecodeError("encoding", f"{what} decodes to {channels} channel(s) of {image.dtype}; accepted: "
                                           "8- or 16-bit grey, colour or colour with alpha")
    return image, f"{names[channels]}{depth}"


def array_to_image_fields(image: np.ndarray, encoding: str) -> dict:
    """``(H, W)`` / ``(H, W, C)`` array -> the fields of a ``sensor_msgs/Image`` (all but ``header``).

    Accepted: mono8 and mono16 (``(H, W)`` uint8 / uint16), rgb8 / bgr8 (``(H, W, 3)`` uint8), rgba8 /
    bgra8 (``(H, W, 4)`` uint8), 32FC1 (``(H, W)`` float32). ``data`` is an ``array.array('B')``
    holding one copy of the pixels (rclpy messages take it as is; wrap it with ``np.frombuffer``
    for rosbags messages); ``is_bigendian`` is the machine's byte order. Raises ``ValueError``.
    """
    if encoding not in _WRITABLE:
        raise ValueError(f"cannot write image encoding {encoding!r}; writable encodings: {', '.join(_WRITABLE)}")
    channels, dtype = _WRITABLE[encoding]
    dtype = np.dtype(dtype)
    image = np.asarray(image)
    if image.ndim == 3 and channels == 1 and image.shape[2] == 1:
        image = image[:, :, 0]
    expected = 2 if channels == 1 else 3
    if image.ndim != expected or (channels > 1 and image.shape[2] != channels) or image.dtype.kind != dtype.kind \
            or image.dtype.itemsize != dtype.itemsize:
        layout = "H x W" if channels == 1 else f"H x W x {channels}"
        raise ValueError(f"encoding {encoding} needs a {layout} {dtype.name} array, got shape {image.shape} of "
                         f"{image.dtype}")
    if not image.dtype.isnative:
        image = image.astype(dtype)
    image = np.ascontiguousarray(image)
    data = array.array("B")
    data.frombytes(memoryview(image).cast("B"))
    height, width = image.shape[:2]
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": int(_NATIVE_BIG_ENDIAN),
            "step": width * channels * dtype.itemsize, "data": data}


__all__ = ["ERROR_KINDS", "ImageDecodeError", "array_to_image_fields", "compressed_to_array", "encoding_layout",
           "check_stamp", "image_to_array"]
