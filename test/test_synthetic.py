"""Tests of the procedural driving video (sdcpc_core.data.synthetic) and its CLI (sdcpc-synth), at tiny sizes."""

import os

import numpy as np
import pytest

pytest.importorskip("cv2")

from sdcpc_core.classes import ClassList
from sdcpc_core.data.datasets import VSPWDataset
from sdcpc_core.data.synthetic import (
    CORRUPTIONS,
    SYNTHETIC_CLASSES,
    SyntheticConfig,
    SyntheticDrive,
    video_name,
    write_vspw,
)
from sdcpc_core.tools import synth

H, W = 64, 128
CLEAN = dict(p_noise=0.0, p_blur=0.0, p_flicker=0.0, p_occlusion=0.0, p_drop=0.0)
ID = {name: SYNTHETIC_CLASSES.index(name) for name in SYNTHETIC_CLASSES.names}


def tiny(**overrides) -> SyntheticConfig:
    return SyntheticConfig(**{"height": H, "width": W, "num_frames": 20, **overrides})


def same_frame(a, b) -> bool:
    return (a.index == b.index and a.stamp_ns == b.stamp_ns and a.corruptions == b.corruptions
            and np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels))


# ------------------------------------------------------------------------------- determinism, shapes
def test_same_seed_gives_identical_frames_in_any_access_order():
    config = tiny(p_drop=0.0, p_noise=0.2, p_occlusion=0.2, stamp_jitter_ms=2.0)
    sequential = list(SyntheticDrive(config, seed=3))
    shuffled = SyntheticDrive(config, seed=3)
    order = np.random.default_rng(0).permutation(len(shuffled))
    by_index = {int(i): shuffled.frame(int(i)) for i in order}
    assert len(sequential) == 20
    assert all(same_frame(frame, by_index[frame.index]) for frame in sequential)
    assert same_frame(shuffled.frame(7), sequential[7])  # asked again after everything else


def test_different_seeds_give_different_videos():
    a, b = SyntheticDrive(tiny(), seed=0).frame(5), SyntheticDrive(tiny(), seed=1).frame(5)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.labels, b.labels)


def test_shapes_dtypes_and_stamps():
    drive = SyntheticDrive(tiny(fps=20.0), seed=2)
    assert len(drive) == 20
    frame = drive.frame(4)
    assert frame.image.shape == (H, W, 3) and frame.image.dtype == np.uint8
    assert frame.labels.shape == (H, W) and frame.labels.dtype == np.uint8
    assert frame.index == 4 and isinstance(frame.stamp_ns, int) and frame.stamp_ns == 200_000_000
    with pytest.raises(IndexError, match=r"0\.\.19"):
        drive.frame(20)
    with pytest.raises(ValueError, match="seed"):
        SyntheticDrive(tiny(), seed=-1)


def test_labels_are_valid_ids_and_the_street_classes_occur():
    present = set()
    for seed in (0, 1, 2):
        drive = SyntheticDrive(tiny(), seed=seed)
        for index in (0, 10, 19):
            labels = drive.frame(index).labels
            assert labels.max() < len(SYNTHETIC_CLASSES)  # no ignore, no id outside the class list
            present |= set(np.unique(labels).tolist())
    expected = {"road", "sidewalk", "building", "vegetation", "sky", "car", "pole", "person"}
    assert {ID[name] for name in expected} <= present, sorted(SYNTHETIC_CLASSES.names[i] for i in present)


def test_surfaces_are_textured_and_colours_vary_between_seeds():
    def frame(strength, seed=0):
        return SyntheticDrive(tiny(texture_strength=strength, noise_sigma=0.0, lens_blur=0.0, **CLEAN), seed).frame(0)

    def roughness(frame, name):
        """Mean colour step between horizontal neighbours that both show class ``name``."""
        inside = (frame.labels[:, 1:] == ID[name]) & (frame.labels[:, :-1] == ID[name])
        return np.abs(np.diff(frame.image.astype(np.float64), axis=1)).sum(2)[inside].mean()

    flat, textured = frame(0.0), frame(1.0)
    for name in ("road", "building", "vegetation"):  # flat colours change only at markings, windows, edges
        assert roughness(textured, name) > 1.5 * roughness(flat, name) + 1, name
    means = [textured.image[textured.labels == ID["road"]].mean(0)]
    means += [frame(1.0, seed).image[frame(1.0, seed).labels == ID["road"]].mean(0) for seed in (1, 2, 3)]
    assert max(np.abs(m - means[0]).max() for m in means[1:]) > 10


def test_cars_move_while_the_static_world_stays():
    config = tiny(ego_speed=(0.0, 0.0), ego_sway=0.0, shake_deg=0.0, persons_per_100m=0.0, parked_cars_per_100m=0.0,
                  cars_per_100m=20.0, **CLEAN)
    drive = SyntheticDrive(config, seed=4)
    car = ID["car"]
    for index in range(4):
        first, later = drive.frame(index).labels, drive.frame(index + 1).labels
        assert (first == car).any() and (later == car).any()
        moved = (first == car) != (later == car)
        assert moved.sum() > 20  # consecutive frames: cars covered or uncovered pixels
        background = (first != car) & (later != car)
        assert np.array_equal(first[background], later[background])  # a parked camera sees a static world


# ------------------------------------------------------------------------------------- corruptions
def test_no_corruption_when_all_probabilities_are_zero():
    drive = SyntheticDrive(tiny(**CLEAN), seed=0)
    assert all(drive.frame(i).corruptions == () for i in range(len(drive)))
    assert [f.index for f in drive] == list(range(20))


@pytest.mark.parametrize("kind", [k for k in CORRUPTIONS if k != "drop"])
def test_a_corruption_with_probability_one_hits_every_frame_but_never_the_labels(kind):
    clean = SyntheticDrive(tiny(**CLEAN), seed=5)
    corrupted = SyntheticDrive(tiny(**{**CLEAN, f"p_{kind}": 1.0}), seed=5)
    for index in (0, 7, 19):
        a, b = clean.frame(index), corrupted.frame(index)
        assert a.corruptions == () and b.corruptions == (kind,)
        assert np.array_equal(a.labels, b.labels)  # the ground truth is the true scene
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 3


def test_an_occluded_car_stays_labelled_car():
    config = tiny(**{**CLEAN, "p_occlusion": 1.0, "occlusion_area": (0.5, 0.6), "parked_cars_per_100m": 20.0})
    clean, occluded = SyntheticDrive(tiny(**{**CLEAN, "parked_cars_per_100m": 20.0}), 6), SyntheticDrive(config, 6)
    hidden_cars = 0
    for index in range(0, 20, 4):
        a, b = clean.frame(index), occluded.frame(index)
        changed = np.abs(a.image.astype(int) - b.image.astype(int)).max(2) > 40
        assert changed.mean() > 0.2  # a large part of the image is hidden
        assert np.array_equal(a.labels, b.labels)
        hidden_cars += int((changed & (b.labels == ID["car"])).sum())
    assert hidden_cars > 0


def test_drops_skip_frames_and_stamps_jump():
    config = tiny(num_frames=40, p_drop=0.3, drop_frames=(1, 2), stamp_jitter_ms=3.0)
    drive = SyntheticDrive(config, seed=8)
    dropped = [i for i in range(40) if drive.is_dropped(i)]
    assert dropped and 0 not in dropped
    delivered = list(drive)
    assert [f.index for f in delivered] == [i for i in range(40) if i not in dropped]
    assert all(f.corruptions.count("drop") == 0 for f in delivered)
    assert "drop" in drive.frame(dropped[0]).corruptions  # random access still renders it
    stamps = np.array([f.stamp_ns for f in delivered])
    period = 1e9 / 30
    assert np.all(np.diff(stamps) > 0)
    assert np.abs(stamps - np.array([f.index for f in delivered]) * period).max() <= 3e6 + 1
    assert np.diff(stamps).max() > 1.5 * period  # a gap where frames were dropped


def test_p_drop_one_delivers_only_the_first_frame():
    drive = SyntheticDrive(tiny(p_drop=1.0, drop_frames=(1, 1)), seed=0)
    assert [f.index for f in drive] == [0]


# ------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("field, value, accepted", [
    ("p_noise", 1.5, "in \\[0, 1\\]"),
    ("lanes", (3, 2), "range"),
    ("height", 8, "in 16..4096"),
    ("width", 5000, "in 16..4096"),
    ("height", 64.5, "a number \\(int\\)"),
    ("ego_speed", (1.0,), "a list of 2 floats"),
    ("blur_frames", (0, 2), "frame counts >= 1"),
    ("stamp_jitter_ms", 20.0, "half a frame period"),
    ("frontage_weights", (0, 0, 0, 0, 0), "positive sum"),
    ("texture_strength", "high", "a number"),
])
def test_invalid_config_values_name_the_field(field, value, accepted):
    with pytest.raises(ValueError, match=f"SyntheticConfig.{field} must be .*{accepted}"):
        SyntheticConfig(**{field: value})


def test_config_from_dict_and_yaml(tmp_path):
    config = SyntheticConfig.from_dict({"height": 96, "lanes": [1, 2], "p_blur": 0})
    assert config.lanes == (1, 2) and config.p_blur == 0.0 and isinstance(config.p_blur, float)
    assert SyntheticConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown SyntheticConfig key\\(s\\): bogus, other"):
        SyntheticConfig.from_dict({"bogus": 1, "other": 2, "height": 96})
    path = tmp_path / "synth.yaml"
    path.write_text("num_frames: 12\nocclusion_frames: [2, 3]\n")
    assert SyntheticConfig.from_yaml(path) == SyntheticConfig(num_frames=12, occlusion_frames=(2, 3))
    path.write_text("num_frames: -1\n")
    with pytest.raises(ValueError, match=r"synth\.yaml: SyntheticConfig\.num_frames"):
        SyntheticConfig.from_yaml(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        SyntheticConfig.from_yaml(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------------------- VSPW files
def test_write_vspw_round_trip_through_the_dataset_reader(tmp_path):
    config = tiny(num_frames=12, p_drop=0.25)
    root = tmp_path / "synthetic"
    summary = write_vspw(root, videos={"train": [2, 3], "val": [9]}, config=config, progress=False)
    drives = {seed: SyntheticDrive(config, seed) for seed in (2, 3, 9)}
    delivered = {seed: [f.index for f in drive] for seed, drive in drives.items()}
    assert summary["frames"] == {"train": len(delivered[2]) + len(delivered[3]), "val": len(delivered[9])}
    assert summary["frames"]["train"] + summary["dropped"]["train"] == 24
    dataset = VSPWDataset(str(root), "train")
    assert dataset.video_names == [video_name(2), video_name(3)]
    assert len(dataset) == summary["frames"]["train"]
    for v, seed in enumerate((2, 3)):
        assert dataset.video_lengths[v] == len(delivered[seed])  # dropped frames are gaps, not files
        for position in range(0, dataset.video_lengths[v], 3):
            clip = dataset.clip(v, position)
            index = int(os.path.splitext(os.path.basename(clip.meta["paths"][-1]))[0])
            assert index == delivered[seed][position]
            expected = drives[seed].frame(index)
            assert np.array_equal(clip.label, expected.labels)
            assert np.abs(clip.frames[-1].astype(int) - expected.image.astype(int)).mean() < 6  # JPEG
    assert ClassList.from_yaml(root / "classes.yaml") == SYNTHETIC_CLASSES
    assert SyntheticConfig.from_yaml(root / "synthetic.yaml") == config
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    with pytest.raises(FileExistsError, match="not empty"):
        write_vspw(root, videos={"train": [2]}, config=config, progress=False)
    summary = write_vspw(root, videos={"train": [4]}, config=tiny(num_frames=3, **CLEAN), progress=False,
                         overwrite=True)
    assert summary["frames"] == {"train": 3}
    assert VSPWDataset(str(root), "train").video_names == [video_name(4)]


def test_write_vspw_rejects_bad_requests(tmp_path):
    for videos, match in (({"train": [1], "val": [1]}, "seed 1 is listed twice"), ({"dev": [1]}, "train, val or test"),
                          ({"train": [-2]}, "integers >= 0"), ({}, "at least one split")):
        with pytest.raises(ValueError, match=match):
            write_vspw(tmp_path / "out", videos=videos, config=tiny(), progress=False)
    with pytest.raises(ValueError, match="jpeg_quality"):
        write_vspw(tmp_path / "out", videos={"train": [1]}, config=tiny(), progress=False, jpeg_quality=0)


def test_only_the_writer_workers_tune_the_allocator(monkeypatch):
    """glibc's heap padding (mallopt) holds for the whole process: a drive never sets it, the workers of
    write_vspw do (their initialiser)."""
    import ctypes

    import cv2

    from sdcpc_core.data.synthetic import drive as drive_module
    from sdcpc_core.data.synthetic import vspw

    calls = []

    class Libc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    monkeypatch.setattr(drive_module, "_heap_tuned", False)
    SyntheticDrive(tiny(num_frames=2), seed=1).frame(0)
    assert calls == []
    threads = cv2.getNumThreads()
    try:
        vspw._worker_setup()
    finally:
        cv2.setNumThreads(threads)
    assert calls == [(-2, 64 << 20)]  # M_TOP_PAD, once


# ---------------------------------------------------------------------------------------------- CLI
def run_cli(args, capsys):
    try:
        code = synth.main([str(a) for a in args])
    except SystemExit as exit:  # argparse errors
        code = exit.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_writes_a_data_set_with_two_workers(tmp_path, capsys):
    out, config = tmp_path / "set", tmp_path / "synth.yaml"
    config.write_text("num_frames: 50\np_blur: 0.5\n")
    code, stdout, stderr = run_cli([out, "--train-seeds", "0-1", "--val-seeds", "7", "--frames", "5", "--size",
                                    "64x128", "--workers", "2", "--config", config], capsys)
    assert code == 0, stderr
    assert "sdcpc-synth: wrote" in stdout and "of 3 videos" in stdout and "frames/s" in stdout
    assert (out / "train.txt").read_text().split() == [video_name(0), video_name(1)]
    assert (out / "val.txt").read_text().split() == [video_name(7)]
    recorded = SyntheticConfig.from_yaml(out / "synthetic.yaml")
    assert (recorded.height, recorded.width, recorded.num_frames, recorded.p_blur) == (64, 128, 5, 0.5)
    assert len(VSPWDataset(str(out), "val")) == len(list(SyntheticDrive(recorded, 7)))


@pytest.mark.parametrize("args, message", [
    (["--train-seeds", "5-2"], "seeds must be integers >= 0 or ranges LOW-HIGH"),
    (["--train-seeds", "1,1"], "seed 1 appears twice"),
    (["--train-seeds", "1", "--val-seeds", "0-3"], "seed 1 is listed twice"),
    ([], "at least one split"),
    (["--train-seeds", "1", "--size", "10x10"], "size must be HEIGHTxWIDTH"),
    (["--train-seeds", "1", "--frames", "0"], "must be an integer >= 1"),
    (["--train-seeds", "1", "--jpeg-quality", "101"], "--jpeg-quality must be in 1..100"),
    (["--train-seeds", "1", "--config", "missing.yaml"], "synthetic config file not found"),
])
def test_cli_rejects_bad_options_in_one_sentence(tmp_path, capsys, args, message):
    args = [a.replace("missing.yaml", str(tmp_path / "missing.yaml")) for a in args]
    code, _, stderr = run_cli([tmp_path / "out", *args], capsys)
    assert code == 2
    assert stderr.startswith("sdcpc-synth: error:") and message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_cli_rejects_a_bad_config_and_a_non_empty_folder(tmp_path, capsys):
    config = tmp_path / "synth.yaml"
    config.write_text("num_frames: 4\nwheels: 3\n")
    code, _, stderr = run_cli([tmp_path / "a", "--train-seeds", "1", "--config", config], capsys)
    assert code == 2 and "unknown SyntheticConfig key(s): wheels" in stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep")
    code, _, stderr = run_cli([busy, "--train-seeds", "1", "--frames", "2", "--size", "64x128"], capsys)
    assert code == 2 and "--overwrite" in stderr
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_parse_seeds():
    assert synth.parse_seeds("0-3,7, 9-10") == [0, 1, 2, 3, 7, 9, 10]
    assert synth.parse_seeds("12") == [12]
    with pytest.raises(ValueError, match="got 'a-b'"):
        synth.parse_seeds("a-b")


# ------------------------------------------------------------------------- scene light, lens, presets
# SHA-256 over image and label bytes of every frame of two 48x96 six-frame drives (seed 3 at the defaults,
# seed 11 with frequent corruptions), recorded before the scene-light and vignetting knobs existed. The
# float arithmetic of OpenCV and numpy may differ in the last bit on other versions, so the comparison
# runs on the versions the digests were recorded with.
GOLDEN_VERSIONS = ("2.4.6", "5.1.0")  # numpy, OpenCV
GOLDEN = {3: ({}, "5b60a82608c791ff8a77dde61d32f150d960d6916ec731ec8a76807929b37b8b"),
          11: (dict(p_noise=0.5, p_blur=0.5, p_flicker=0.5, p_occlusion=0.5),
               "9de7dfef9c58da51a3d4cba8d0b051b51afa96ba4ed3aedc8fd39692f47c1822")}


@pytest.mark.parametrize("seed", sorted(GOLDEN))
def test_default_knobs_render_existing_seeds_bit_identically(seed):
    import hashlib

    import cv2

    if (np.__version__, cv2.__version__) != GOLDEN_VERSIONS:
        pytest.skip(f"digests recorded with numpy {GOLDEN_VERSIONS[0]} / OpenCV {GOLDEN_VERSIONS[1]}; this is "
                    f"numpy {np.__version__} / OpenCV {cv2.__version__}")
    overrides, expected = GOLDEN[seed]
    drive = SyntheticDrive(SyntheticConfig(height=48, width=96, num_frames=6, **overrides), seed)
    digest = hashlib.sha256()
    for index in range(len(drive)):
        frame = drive.frame(index)
        digest.update(frame.image.tobytes())
        digest.update(frame.labels.tobytes())
    assert digest.hexdigest() == expected


def test_explicit_default_light_is_the_default():
    explicit = tiny(**CLEAN, brightness=(1, 1), contrast=(1, 1), color_cast=(1, 1, 1), vignetting=0)
    assert explicit == tiny(**CLEAN)
    assert same_frame(SyntheticDrive(explicit, 4).frame(3), SyntheticDrive(tiny(**CLEAN), 4).frame(3))


def test_scene_light_and_vignetting_change_the_image_but_not_the_labels():
    base = SyntheticDrive(tiny(**CLEAN, noise_sigma=0.0), 4).frame(3)
    dusk = SyntheticDrive(tiny(**CLEAN, noise_sigma=0.0, brightness=(0.4, 0.4), color_cast=(1.2, 1.0, 0.7)), 4).frame(3)
    np.testing.assert_array_equal(dusk.labels, base.labels)
    ratio = dusk.image.reshape(-1, 3).mean(0) / base.image.reshape(-1, 3).mean(0)
    assert 0.4 < ratio[0] < 0.55 and 0.35 < ratio[1] < 0.45 and 0.25 < ratio[2] < 0.33  # gain x cast, rounded
    flat = SyntheticDrive(tiny(**CLEAN, noise_sigma=0.0, contrast=(0.5, 0.5)), 4).frame(3)
    assert flat.image.astype(float).std() < 0.6 * base.image.astype(float).std()
    vignette = SyntheticDrive(tiny(**CLEAN, noise_sigma=0.0, vignetting=0.5), 4).frame(3)
    loss = 1 - vignette.image.astype(float) / np.maximum(base.image.astype(float), 1)
    corner, centre = loss[:8, :8][base.image[:8, :8] > 40].mean(), loss[28:36, 60:68].mean()
    assert corner > 0.35 and abs(centre) < 0.05


def test_each_video_draws_its_own_light_from_the_ranges():
    config = tiny(**CLEAN, noise_sigma=0.0, brightness=(0.3, 1.0))
    means = [SyntheticDrive(config, seed).frame(0).image.mean() / SyntheticDrive(tiny(**CLEAN, noise_sigma=0.0),
                                                                                seed).frame(0).image.mean()
             for seed in range(4)]
    assert all(0.28 < m < 1.02 for m in means) and max(means) - min(means) > 0.1


@pytest.mark.parametrize("field, value, accepted", [
    ("brightness", (0.0, 1.0), r"a range \(low, high\) within \[0.05, 4\]"),
    ("contrast", (1.5, 1.0), r"a range \(low, high\) within \[0.2, 2\]"),
    ("color_cast", (1.0, 1.0), "a list of 3 floats"),
    ("color_cast", (1.0, 5.0, 1.0), r"three gains \(red, green, blue\) in \[0.2, 3\]"),
    ("vignetting", 1.0, r"in \[0, 0.9\]"),
])
def test_invalid_light_and_lens_values_name_the_field(field, value, accepted):
    with pytest.raises(ValueError, match=f"SyntheticConfig.{field} must be {accepted}"):
        SyntheticConfig(**{field: value})


def test_shifted_preset_documents_every_change_and_renders(tmp_path, capsys):
    import re
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "config" / "synthetic" / "shifted.yaml"
    shifted, default = SyntheticConfig.from_yaml(path), SyntheticConfig()
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    changed = []
    for line in lines:
        key = line.split(":")[0]
        changed.append(key)
        assert getattr(shifted, key) != getattr(default, key), key
        bracket = re.search(r"#\s*\[([^\]]*)\]", line)  # the default, written in brackets
        assert bracket, f"{key}: no [default] in its comment"
        value = getattr(default, key)
        assert [float(v) for v in bracket.group(1).split(",")] == [float(v) for v in np.atleast_1d(value)], key
    # lighting, traffic, camera height and lens, corruptions all shift
    assert {"brightness", "contrast", "color_cast", "cars_per_100m", "persons_per_100m", "camera_height",
            "hfov_deg", "vignetting", "p_noise", "p_occlusion"} <= set(changed)
    out = tmp_path / "x"
    code, _, stderr = run_cli([out, "--val-seeds", "3000-3001", "--frames", "3", "--size", "48x96", "--config",
                               path], capsys)
    assert code == 0, stderr
    recorded = SyntheticConfig.from_yaml(out / "synthetic.yaml")
    assert recorded.brightness == shifted.brightness and recorded.num_frames == 3
    assert len(VSPWDataset(str(out), "val")) == sum(len(list(SyntheticDrive(recorded, s))) for s in (3000, 3001))
