import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import BasicBlock, Bottleneck, create_model, is_cifar_model, list_models

FIXTURES = Path(__file__).parent / "fixtures"


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
    ("resnet101", 44_549_160), ("resnet152", 60_192_808),
])
def test_imagenet_parameter_counts_are_exact(name, expected):
    assert n_params(create_model(name, num_classes=1000)) == expected


@pytest.mark.parametrize("name, millions", [
    ("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85),
    ("resnet110", 1.7), ("resnet1202", 19.4),
])
def test_cifar_parameter_counts_match_table_6(name, millions):
    digits = 1 if millions >= 1 else 2
    assert round(n_params(create_model(name, num_classes=10)) / 1e6, digits) == millions


@pytest.mark.parametrize("name, gmacs", [
    ("resnet18", 1.8), ("resnet34", 3.6), ("resnet50", 3.8), ("resnet101", 7.6), ("resnet152", 11.3),
])
def test_multiply_adds_match_table_1(name, gmacs):
    model = create_model(name, stride_in_1x1=True).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    measured = counter.get_total_flops() / 2 / 1e9  # the counter counts a multiply-add as 2 FLOPs
    assert measured == pytest.approx(gmacs, rel=0.05)


def test_stride_on_the_3x3_costs_more_than_the_papers_placement():
    def gmacs(**kw):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            create_model("resnet50", **kw).eval()(torch.zeros(1, 3, 224, 224))
        return counter.get_total_flops()

    assert gmacs(stride_in_1x1=False) > gmacs(stride_in_1x1=True)


SMALL_NAMES = [n for n in list_models() if n not in {"resnet1202", "plain1202", "resnet152", "plain152",
                                                        "resnet101", "plain101"}]


@pytest.mark.parametrize("name", SMALL_NAMES)
def test_every_model_shapes_and_head_seam(name):
    torch.manual_seed(0)
    cifar = is_cifar_model(name)
    size, stride = (32, 4) if cifar else (64, 32)
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert logits.shape == (2, 7)
    assert features.shape[-2:] == (size // stride, size // stride)
    assert features.shape[1] == model.fc.in_features
    torch.testing.assert_close(logits, model.forward_head(features))


@pytest.mark.parametrize("name", ["resnet101", "resnet152", "resnet1202"])
def test_deep_models_build_with_the_right_stage_sizes(name):
    model = create_model(name)
    blocks = [len(s) for s in model.stages]
    assert blocks == {"resnet101": [3, 4, 23, 3], "resnet152": [3, 8, 36, 3], "resnet1202": [200] * 3}[name]


def test_in_channels_option():
    model = create_model("resnet20", in_channels=1).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_strided_cifar_stem_takes_twice_the_side_at_the_same_cost():
    plain, strided = create_model("resnet20").eval(), create_model("resnet20", stem_stride=2).eval()
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in strided.parameters())
    costs = []
    for model, side in ((plain, 32), (strided, 64)):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            features = model.forward_features(torch.zeros(1, 3, side, side))
        assert features.shape[-2:] == (8, 8)
        costs.append(counter.get_total_flops())
    assert costs[1] == pytest.approx(costs[0], rel=0.01)
    with pytest.raises(ValueError, match="CIFAR stem"):
        create_model("resnet18", stem_stride=2)


@pytest.mark.parametrize("block, planes_in, planes", [(BasicBlock, 8, 8), (Bottleneck, 32, 8)])
def test_zeroed_branch_passes_input_through_only_with_a_shortcut(block, planes_in, planes):
    x = torch.rand(2, planes_in, 6, 6)  # non-negative, so the final ReLU keeps it
    residual = block(planes_in, planes, residual=True).eval()
    plain = block(planes_in, planes, residual=False).eval()
    for b in (residual, plain):
        torch.nn.init.zeros_(b.last_bn.weight)
        torch.nn.init.zeros_(b.last_bn.bias)
    with torch.no_grad():
        torch.testing.assert_close(residual(x), x)
        assert plain(x).abs().max() == 0


def test_zero_init_residual_makes_every_block_an_identity():
    model = create_model("resnet18", zero_init_residual=True).eval()
    for stage in model.stages:
        for block in stage:
            assert torch.all(block.last_bn.weight == 0)
    x = torch.rand(1, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.layer1(x), x)


def test_shortcut_options_differ_in_projections():
    def projections(shortcut):
        model = create_model("resnet18", shortcut=shortcut)
        return sum(1 for k in model.state_dict() if ".downsample.0.weight" in k)

    assert projections("A") == 0  # zero-padding identity, no parameters
    assert projections("B") == 3  # only where the shape changes: first block of stages 2-4
    assert projections("C") == 8  # every block


def test_option_a_shortcut_pads_channels_and_subsamples():
    model = create_model("resnet20", shortcut="A")
    shortcut = model.layer2[0].downsample
    x = torch.randn(1, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert torch.all(y[:, 16:] == 0)


def test_plain_networks_have_no_shortcuts_and_same_layers():
    plain, res = create_model("plain34"), create_model("resnet34", shortcut="A")
    assert n_params(plain) == n_params(res)
    assert all(b.downsample is None for s in plain.stages for b in s)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        create_model("resnet19")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_state_dict_loads_strictly(name):
    """The fixture holds torchvision's key names and shapes (tests/models/fixtures/make_fixture.py)."""
    spec = json.loads((FIXTURES / f"torchvision_{name}_keys.json").read_text())
    state = {k: torch.zeros(shape) for k, shape in spec.items()}
    for k in state:
        if k.endswith("num_batches_tracked"):
            state[k] = torch.zeros((), dtype=torch.long)
    model = create_model(name)
    model.load_state_dict(state, strict=True)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == spec
