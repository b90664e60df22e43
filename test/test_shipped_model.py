"""The shipped demo model (sdcpc_core/assets/sdcpc_b0_synthetic.safetensors): loadable by its short
name, small, carrying its class list, and trained (it segments held-out synthetic frames)."""

from sdcpc_core.data.synthetic import SYNTHETIC_CLASSES, SyntheticConfig, SyntheticDrive
from sdcpc_core.eval.metrics import ConfusionMatrix
from sdcpc_core.runtime.streaming import StreamingSegmenter
from sdcpc_core.weights import read_class_list
from sdcpc_core.weights.shipped import resolve_checkpoint, shipped_checkpoints

NAME = 'sdcpc_b0_synthetic'


def test_shipped_file_is_small_and_carries_its_classes():
    assert NAME in shipped_checkpoints()
    path = resolve_checkpoint(NAME)
    assert path.stat().st_size < 10 * 2**20
    assert read_class_list(path) == SYNTHETIC_CLASSES


def test_shipped_model_segments_held_out_frames():
    # seed 4242 is in neither the training (0-39) nor the validation (1000-1004) videos
    drive = SyntheticDrive(SyntheticConfig(height=120, width=240, num_frames=8), seed=4242)
    segmenter = StreamingSegmenter.from_checkpoint(NAME, input_size=(128, 256))
    confusion = ConfusionMatrix(len(SYNTHETIC_CLASSES))
    for frame in drive:
        result = segmenter.step(frame.image, frame.stamp_ns, 'camera')
        confusion.update(frame.labels, result.labels)
    # an untrained model is near chance (about 5% of pixels for 19 classes)
    assert confusion.pixel_accuracy() > 0.6, confusion.pixel_accuracy()
    assert confusion.miou() > 0.2, confusion.miou()
    print(f'held-out accuracy {confusion.pixel_accuracy():.3f}, mIoU {confusion.miou():.3f}')
