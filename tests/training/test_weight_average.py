import pytest
import torch

from training.config import recipe
from training.train import load_checkpoint_model, train, weight_average

TINY = dict(architecture="resnet8", image_size=24, synthetic_train=256, synthetic_val=32, batch_size=32, warmup_steps=0,
            lr=0.05, log_every=1, channels_last=False)


def test_the_average_follows_the_ramped_decay_in_weights_and_batchnorm_statistics():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    averaged = weight_average(net, 0.6)
    expected_w, expected_mean = None, None
    for n, value in enumerate([1.0, 3.0, -2.0, 5.0]):
        with torch.no_grad():
            net[0].weight.fill_(value)
            net[1].running_mean.fill_(10 * value)
        averaged.update_parameters(net)
        if expected_w is None:  # the first update copies
            expected_w, expected_mean = value, 10 * value
        else:  # n updates already averaged: decay min(0.6, (1 + n) / (10 + n))
            d = min(0.6, (1 + n) / (10 + n))
            expected_w = d * expected_w + (1 - d) * value
            expected_mean = d * expected_mean + (1 - d) * 10 * value
    assert averaged.module[0].weight.detach().flatten().tolist() == pytest.approx([expected_w] * 4)
    assert averaged.module[1].running_mean.tolist() == pytest.approx([expected_mean] * 2)
    assert net[0].weight[0, 0].item() == 5.0  # the network itself is untouched


def test_off_at_zero_and_a_decay_outside_zero_to_one_is_refused():
    net = torch.nn.Linear(2, 2)
    assert weight_average(net, 0.0) is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        weight_average(net, 1.5)


def test_a_run_with_the_average_keeps_it_and_resumes_to_the_same_weights(tmp_path):
    cfg = recipe("demo", **TINY, epochs=2, ema=0.9)
    whole = train(cfg, tmp_path / "whole")
    plain = train(cfg.replace(ema=0.0), tmp_path / "plain")
    train(cfg.replace(stop_after_epochs=1), tmp_path / "split")
    train(cfg, tmp_path / "split", resume=True)
    a, ckpt = load_checkpoint_model(whole)
    b, _ = load_checkpoint_model(tmp_path / "split" / "checkpoint.pth")
    c, _ = load_checkpoint_model(plain)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert ckpt["ema"] is None  # the average became the model
    # the same seed and steps without the average end elsewhere: what was kept is the average
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
