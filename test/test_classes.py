"""Class lists: shipped YAML files, checkpoint metadata, validation and colouring."""
import numpy as np
import pytest
import torch

from sdcpc_core.classes import ClassInfo, ClassList, shipped_class_lists
from sdcpc_core.models import build_model
from sdcpc_core.weights import read_class_list, save_weights


def test_shipped_lists_round_trip_through_json():
    assert shipped_class_lists() == ['camvid', 'cityscapes', 'vspw']
    for name, count in (('cityscapes', 19), ('camvid', 11), ('vspw', 124)):
        classes = ClassList.load(name)
        assert len(classes) == count and classes.dataset == name
        assert ClassList.from_json(classes.to_json()) == classes
    cityscapes = ClassList.shipped('cityscapes')
    assert cityscapes.index('car') == 13 and cityscapes.names[0] == 'road'


def test_colorize_uses_the_palette_and_blacks_out_other_ids():
    classes = ClassList.shipped('cityscapes')
    labels = np.array([[0, 13], [255, 200]], np.uint8)
    rgb = classes.colorize(labels)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[0, 1]) == classes.classes[13].color
    assert not rgb[1].any()


def test_generic_lists_above_255_classes_use_a_16_bit_ignore_id():
    small, large = ClassList.generic(5), ClassList.generic(300)
    assert small.ignore_id == 255 and large.ignore_id == 65535
    assert len(set(c.color for c in small.classes)) == 5
    assert tuple(large.colorize(np.array([[299]], np.uint16))[0, 0]) == large.classes[299].color


@pytest.mark.parametrize('classes, match', [
    ((ClassInfo(1, 'a', (0, 0, 0)),), 'in order'),
    ((ClassInfo(0, 'a', (0, 0, 300)),), 'color'),
    ((ClassInfo(0, 'a', (0, 0, 0)), ClassInfo(1, 'a', (1, 1, 1))), 'unique'),
])
def test_invalid_lists_are_refused(classes, match):
    with pytest.raises(ValueError, match=match):
        ClassList(classes)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'missing\.yaml'):
        ClassList.load(tmp_path / 'missing.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('classes: [{id: 0}]\n')
    with pytest.raises(ValueError, match=r'bad\.yaml'):
        ClassList.from_yaml(bad)
    with pytest.raises(ValueError, match='shipped: camvid, cityscapes, vspw'):
        ClassList.shipped('kitti')


def test_checkpoints_carry_their_class_list(tmp_path):
    torch.manual_seed(0)
    model = build_model('segformer_b0', 3)
    classes = ClassList((ClassInfo(0, 'road', (1, 2, 3)), ClassInfo(1, 'car', (4, 5, 6)),
                         ClassInfo(2, 'sky', (7, 8, 9))))
    save_weights(model, tmp_path / 'with.safetensors', metadata={'classes': classes.to_json()})
    save_weights(model, tmp_path / 'without.safetensors')
    assert read_class_list(tmp_path / 'with.safetensors') == classes
    assert read_class_list(tmp_path / 'without.safetensors') is None
