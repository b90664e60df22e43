"""Shared test set-up."""
import pytest
import torch

from sdcpc_core.models import build_model

SLOW_TIMEOUT_S = 900


def pytest_collection_modifyitems(items):
    """Tests marked ``slow`` get a timeout of SLOW_TIMEOUT_S unless they set their own (``@pytest.mark.timeout``);
    the others have the default of pyproject.toml."""
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


def pytest_runtest_setup(item):
    """Tests marked ``gpu`` skip, with the reason, on a machine without a CUDA device."""
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: the test models are tiny, and with more threads than free cores
    (CI machines have two) OpenMP barriers stall far longer than the work takes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_temporal_model():
    """Tiny SD-CPC (5 classes) whose temporal part matters (zero-initialised scales set at random); window 3
    keeps the temporal graph small (9 offsets) so exports stay quick."""
    torch.manual_seed(0)
    model = build_model("sdcpc_b0", 5, coarse_tokens=4, window=3)
    with torch.no_grad():
        for parameter in model.zero_initialised_scales():
            parameter.normal_()
    return model.eval()


@pytest.fixture
def synthetic_bag(tmp_path, capsys):
    """A 3-frame 48x96 synthetic drive written by ``sdcpc-bag synth`` (needs ROS 2: skips without rclpy)."""
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed: pip install -e '.[ros]'")
    from sdcpc_ros.bag import cli

    bag = tmp_path / "drive.mcap"
    assert cli.main(["synth", str(bag), "--frames", "3", "--size", "48x96", "--no-progress"]) == 0
    capsys.readouterr()
    return bag
