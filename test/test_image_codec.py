"""sdcpc_ros.image_codec: Image / CompressedImage <-> numpy, on rclpy and rosbags message objects."""
import array
import os
import sys

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

pytest.importorskip("sensor_msgs", reason="sensor_msgs (ROS 2) is not installed: pip install -e '.[ros]'")

from sensor_msgs.msg import CompressedImage, Image

from sdcpc_core.runtime.image import ENCODINGS, to_rgb
from sdcpc_ros.image_codec import (
    ImageDecodeError,
    array_to_image_fields,
    compressed_to_array,
    encoding_layout,
    image_to_array,
)

pytestmark = pytest.mark.ros  # every test here needs ROS 2 (rclpy and the message packages)

ROSBAGS = get_typestore(Stores.ROS2_HUMBLE).types
CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def _pixels(height, width, channels, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def _raw(pixels, encoding, padding=0, big_endian=False, flavour="rclpy"):
    """An Image message holding ``pixels`` with ``padding`` bytes after every row."""
    height, width = pixels.shape[:2]
    dtype = pixels.dtype.newbyteorder(">" if big_endian else "<")
    rows = pixels.astype(dtype).reshape(height, -1).view(np.uint8)
    step = rows.shape[1] + padding
    buffer = np.full((height, step), 0xAB, np.uint8)
    buffer[:, :rows.shape[1]] = rows
    fields = dict(height=height, width=width, encoding=encoding, is_bigendian=int(big_endian), step=step)
    if flavour == "rosbags":
        return ROSBAGS["sensor_msgs/msg/Image"](header=_rosbags_header(), data=buffer.reshape(-1), **fields)
    return Image(data=array.array("B", buffer.tobytes()), **fields)


def _rosbags_header():
    return ROSBAGS["std_msgs/msg/Header"](stamp=ROSBAGS["builtin_interfaces/msg/Time"](sec=1, nanosec=2),
                                          frame_id="camera")


def _compressed(data, fmt, flavour="rclpy"):
    data = np.asarray(data, np.uint8).reshape(-1)
    if flavour == "rosbags":
        return ROSBAGS["sensor_msgs/msg/CompressedImage"](header=_rosbags_header(), format=fmt, data=data)
    return CompressedImage(format=fmt, data=array.array("B", data.tobytes()))


def _data_buffer(msg):
    return np.frombuffer(msg.data, np.uint8) if isinstance(msg.data, array.array) else msg.data


# ------------------------------------------------------------------------------------------ raw images
@pytest.mark.parametrize("flavour", ["rclpy", "rosbags"])
@pytest.mark.parametrize("encoding", sorted(CHANNELS))
@pytest.mark.parametrize("padding", [0, 5])
def test_raw_image_is_a_view_honouring_step(encoding, padding, flavour):
    pixels = _pixels(7, 11, CHANNELS[encoding])
    msg = _raw(pixels, encoding, padding, flavour=flavour)
    image, decoded_encoding = image_to_array(msg, ENCODINGS)
    assert decoded_encoding == encoding
    np.testing.assert_array_equal(image, pixels)
    assert np.shares_memory(image, _data_buffer(msg)), "decoding copied the pixels"


def test_model_input_needs_no_copy_for_unpadded_rgb8():
    msg = _raw(_pixels(6, 9, 3), "rgb8")
    image, _ = image_to_array(msg)
    assert np.shares_memory(to_rgb(image, "rgb8"), _data_buffer(msg))


@pytest.mark.parametrize("big_endian", [False, True])
def test_sixteen_bit_images_follow_is_bigendian(big_endian):
    pixels = _pixels(4, 5, 1, np.uint16)
    msg = _raw(pixels, "mono16", padding=2, big_endian=big_endian)
    image, encoding = image_to_array(msg)
    assert encoding == "mono16" and image.dtype.isnative and image.dtype.itemsize == 2
    np.testing.assert_array_equal(image, pixels)
    same_order = big_endian == (sys.byteorder == "big")
    assert np.shares_memory(image, _data_buffer(msg)) == same_order  # swapped bytes need their one copy


def test_encoding_layouts():
    assert encoding_layout("bgra16") == (4, np.dtype("u2"))
    assert encoding_layout("32FC1") == (1, np.dtype("f4"))
    assert encoding_layout("16SC3") == (3, np.dtype("i2"))
    assert encoding_layout("bayer_rggb8") == (1, np.dtype("u1"))
    assert encoding_layout("yuv422") is None


def _fields(encoding="rgb8", height=4, width=6, step=None, data_bytes=None):
    channels = CHANNELS.get(encoding, 3)
    step = width * channels if step is None else step
    size = height * step if data_bytes is None else data_bytes
    return Image(height=height, width=width, encoding=encoding, step=step, data=array.array("B", bytes(size)))


@pytest.mark.parametrize("msg, kind, words", [
    (_fields("yuv422"), "encoding", "'yuv422'"),
    (_fields("mono16", step=12), "encoding", "accepted encodings: rgb8"),
    (_fields(data_bytes=71), "size", "71 bytes but height x step = 4 x 18 = 72"),
    (_fields(step=17, data_bytes=68), "size", "step 17 is smaller"),
    (_fields(height=0, data_bytes=0), "zero_size", "0 x 6"),
    (_fields(width=0, step=0, data_bytes=0), "zero_size", "4 x 0"),
    (_fields(height=5000, width=5000, step=15000, data_bytes=0), "too_large", "exceeds the limit of 1000000"),
])
def test_bad_raw_images_raise_their_kind(msg, kind, words):
    with pytest.raises(ImageDecodeError, match=words) as caught:
        image_to_array(msg, ENCODINGS, max_pixels=1_000_000)
    assert caught.value.kind == kind
    assert isinstance(caught.value, ValueError)


def test_unknown_error_kind_is_refused():
    with pytest.raises(ValueError, match="unknown ImageDecodeError kind"):
        ImageDecodeError("bad", "text")


# ----------------------------------------------------------------------------------- compressed images
def _smooth_rgb(height=24, width=32):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1).astype(np.uint8)


def _encode(suffix, image):
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data


@pytest.mark.parametrize("flavour", ["rclpy", "rosbags"])
def test_png_decodes_exactly_to_rgb(flavour):
    rgb = _smooth_rgb()
    msg = _compressed(_encode(".png", rgb[:, :, ::-1]), "bgr8; png compressed bgr8", flavour)
    image, encoding = compressed_to_array(msg)
    np.testing.assert_array_equal(to_rgb(image, encoding), rgb)


def test_jpeg_decodes_close_to_the_source():
    rgb = _smooth_rgb()
    image, encoding = compressed_to_array(_compressed(_encode(".jpg", rgb[:, :, ::-1]), "jpeg"))
    assert image.shape == rgb.shape
    assert np.abs(to_rgb(image, encoding).astype(int) - rgb).mean() < 3


@pytest.mark.parametrize("pixels, expected", [
    (_pixels(9, 7, 1), "mono8"),
    (_pixels(9, 7, 1, np.uint16), "mono16"),
    (_pixels(9, 7, 4), "bgra8"),
])
def test_png_keeps_grey_depth_and_alpha(pixels, expected):
    image, encoding = compressed_to_array(_compressed(_encode(".png", pixels), "png"))
    assert encoding == expected
    np.testing.assert_array_equal(image, pixels)


def test_compressed_format_may_be_empty():
    image, _ = compressed_to_array(_compressed(_encode(".png", _pixels(3, 4, 1)), ""))
    assert image.shape == (3, 4)


def test_bad_compressed_images_raise_their_kind():
    jpeg = _encode(".jpg", _smooth_rgb())
    png = _encode(".png", _smooth_rgb(100, 100))
    small_png = _encode(".png", _smooth_rgb())
    cases = [
        (_compressed(jpeg, "tiff"), "encoding", "'tiff' is not supported"),
        (_compressed(png, "16UC1; compressedDepth png"), "encoding", "compressedDepth"),
        (_compressed(np.zeros(0, np.uint8), "jpeg"), "zero_size", "no data"),
        (_compressed(np.frombuffer(b"not an image at all", np.uint8), "jpeg"), "corrupt", "neither JPEG nor PNG"),
        (_compressed(jpeg[: len(jpeg) // 2], "jpeg"), "corrupt", "not a complete JPEG"),
        (_compressed(np.concatenate([small_png[:40], np.zeros(200, np.uint8)]), "png"), "corrupt",
         "could not be decoded"),
        (_compressed(png, "png"), "too_large", "100 x 100 = 10000 pixels exceeds the limit of 5000"),
    ]
    for msg, kind, words in cases:
        with pytest.raises(ImageDecodeError, match=words) as caught:
            compressed_to_array(msg, max_pixels=5000)
        assert caught.value.kind == kind, words


def test_jpeg_size_is_read_from_the_header_before_decoding():
    jpeg = _encode(".jpg", _smooth_rgb(40, 60))
    with pytest.raises(ImageDecodeError, match="40 x 60") as caught:
        compressed_to_array(_compressed(jpeg, "jpeg"), max_pixels=40 * 60 - 1)
    assert caught.value.kind == "too_large"
    image, _ = compressed_to_array(_compressed(jpeg, "jpeg"), max_pixels=40 * 60)
    assert image.shape[:2] == (40, 60)


# ------------------------------------------------------------------------------------------ outgoing
@pytest.mark.parametrize("encoding, pixels", [
    ("mono8", _pixels(5, 6, 1)),
    ("mono16", _pixels(5, 6, 1, np.uint16)),
    ("rgb8", _pixels(5, 6, 3)),
    ("bgra8", _pixels(5, 6, 4)),
    ("32FC1", np.random.default_rng(0).random((5, 6), dtype=np.float32)),
])
def test_array_to_image_fields_round_trip(encoding, pixels):
    fields = array_to_image_fields(pixels, encoding)
    assert isinstance(fields["data"], array.array) and fields["data"].typecode == "B"
    assert fields["step"] == 6 * pixels.itemsize * (1 if pixels.ndim == 2 else pixels.shape[2])
    assert fields["is_bigendian"] == int(sys.byteorder == "big")
    msg = Image(**fields)  # rclpy takes array.array('B') without a per-element check
    image, decoded = image_to_array(msg)
    assert decoded == encoding
    np.testing.assert_array_equal(image, pixels)
    rosbags_msg = ROSBAGS["sensor_msgs/msg/Image"](header=_rosbags_header(), **{
        **fields, "data": np.frombuffer(fields["data"], np.uint8)})
    np.testing.assert_array_equal(image_to_array(rosbags_msg)[0], pixels)


def test_array_to_image_fields_takes_strided_and_swapped_arrays():
    pixels = _pixels(6, 8, 3)[:, ::2]
    image, _ = image_to_array(Image(**array_to_image_fields(pixels, "rgb8")))
    np.testing.assert_array_equal(image, pixels)
    swapped = _pixels(3, 4, 1, np.uint16).astype(">u2")
    image, _ = image_to_array(Image(**array_to_image_fields(swapped, "mono16")))
    np.testing.assert_array_equal(image, swapped)


@pytest.mark.parametrize("encoding, pixels, words", [
    ("mono8", np.zeros((4, 4), np.uint16), "H x W uint8"),
    ("rgb8", np.zeros((4, 4, 4), np.uint8), "H x W x 3 uint8"),
    ("32FC1", np.zeros((4, 4), np.float64), "H x W float32"),
    ("yuv422", np.zeros((4, 4), np.uint8), "writable encodings"),
])
def test_array_to_image_fields_refuses_mismatched_arrays(encoding, pixels, words):
    with pytest.raises(ValueError, match=words):
        array_to_image_fields(pixels, encoding)


# --------------------------------------------------------------------------------- decoder messages
def _noisy_rgb(height=96, width=128):
    """A photo-like image whose JPEG has a long entropy-coded segment (truncating it loses blocks)."""
    return cv2.GaussianBlur(_pixels(height, width, 3, seed=5), (5, 5), 0)


def test_truncated_files_are_corrupt_frames_and_print_nothing(capfd):
    """Truncated JPEGs and PNGs, the JPEG also with an end marker appended (libjpeg decodes it, padded,
    after printing "Corrupt JPEG data: premature end of data segment"): each is a "corrupt" frame, and
    the decoders' lines never reach the terminal."""
    jpeg = _encode(".jpg", _noisy_rgb()).tobytes()
    png = _encode(".png", _noisy_rgb()).tobytes()
    cases = {
        "jpeg cut, end marker appended": jpeg[: len(jpeg) // 2] + b"\xff\xd9",
        "jpeg cut at two thirds, end marker appended": jpeg[: 2 * len(jpeg) // 3] + b"\xff\xd9",
        "png cut": png[: len(png) // 2],
        "png cut before IEND": png[:-20],
        "png with a flipped byte": png[: len(png) // 2] + bytes([png[len(png) // 2] ^ 0xFF]) + png[len(png) // 2 + 1:],
    }
    capfd.readouterr()
    for name, data in cases.items():
        with pytest.raises(ImageDecodeError) as caught:
            compressed_to_array(_compressed(np.frombuffer(data, np.uint8), "jpeg" if "jpeg" in name else "png"))
        assert caught.value.kind == "corrupt", name
        if name == "jpeg cut, end marker appended":
            assert "reported 'Corrupt JPEG data: premature end of data segment'" in str(caught.value)
    image, encoding = compressed_to_array(_compressed(np.frombuffer(jpeg, np.uint8), "jpeg"))  # intact: decodes
    assert image.shape == (96, 128, 3) and encoding == "rgb8"
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == "", captured


def test_other_output_during_a_decode_is_passed_on(capfd):
    """What another thread writes to stderr while a decode has it is written on afterwards, not lost."""
    from sdcpc_ros.image_codec import _DECODER_OUTPUT

    def decode():
        os.write(2, b"Corrupt JPEG data: premature end of data segment\n[INFO] [node]: still running\n")
        return "image"

    capfd.readouterr()
    for _ in range(2):  # each capture starts empty, at the start of its file
        result, lines = _DECODER_OUTPUT.capture(decode)
        assert result == "image" and lines == ["Corrupt JPEG data: premature end of data segment"]
        assert capfd.readouterr().err == "[INFO] [node]: still running\n"
    result, lines = _DECODER_OUTPUT.capture(lambda: "quiet")
    assert (result, lines) == ("quiet", []) and capfd.readouterr().err == ""


def test_stamps_with_nanosec_of_a_second_or_more_are_refused():
    from builtin_interfaces.msg import Time

    from sdcpc_ros.image_codec import check_stamp

    check_stamp(Time(sec=5, nanosec=999_999_999))
    with pytest.raises(ImageDecodeError, match="nanosec 1000000000, which must be below 1000000000") as caught:
        check_stamp(Time(sec=5, nanosec=1_000_000_000))
    assert caught.value.kind == "stamp"
