"""The paper presets' ImageNet weights: one loader (lens_core.model.weights) for the DenseNet-121 backbone and
the FPR's ResNet-18, reading a local torchvision state_dict and refusing anything else by name."""
import pytest
import torch
from torchvision.models import densenet121, resnet18

from lens_core.fpr.model import FprNet
from lens_core.model.backbone import build_backbone


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    torch.manual_seed(1)
    state = resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def densenet_file(tmp_path_factory):
    torch.manual_seed(2)
    state = densenet121(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "densenet121.pt"
    torch.save(state, path)
    return path, state


def test_backbone_takes_densenet_weights(densenet_file):
    path, state = densenet_file
    backbone = build_backbone("paper", 3, str(path))
    stages = backbone.stages
    assert torch.equal(stages.stem[0].weight, state["features.conv0.weight"])
    assert torch.equal(stages.block3[1].denselayer24.conv2.weight,
                       state["features.denseblock3.denselayer24.conv2.weight"])


def test_fpr_inflates_resnet_weights(resnet_file):
    """The stem's 2D kernel, summed over RGB, repeated over depth and divided by it (I3D inflation)."""
    path, state = resnet_file
    net = FprNet("paper", str(path))
    stem = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)][0]
    depth = stem.weight.shape[2]
    expected = state["conv1.weight"].sum(1, keepdim=True).unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
    assert torch.allclose(stem.weight, expected)


def test_wrong_files_are_refused_by_name(tmp_path, resnet_file, densenet_file):
    with pytest.raises(FileNotFoundError, match="densenet121 weights file not found"):
        build_backbone("paper", 3, str(tmp_path / "nothing.pt"))
    with pytest.raises(ValueError, match=r"resnet18\.pt: not a torchvision densenet121 state_dict"):
        build_backbone("paper", 3, str(resnet_file[0]))
    with pytest.raises(ValueError, match=r"densenet121\.pt: not a torchvision resnet18 state_dict"):
        FprNet("paper", str(densenet_file[0]))
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt: cannot read resnet18 weights"):
        FprNet("paper", str(text))
    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    with pytest.raises(ValueError, match="list.pt: not a state_dict"):
        build_backbone("paper", 3, str(listed))
