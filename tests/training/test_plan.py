"""The training plan: steps from the data with a floor and a time budget, the image size from
the images, and the augmentation for small data sets."""

import pytest
import torch
from PIL import Image

from training.config import recipe
from training.data import shift_scale_augment
from training.plan import adapt_to_data, choose_precision, make_plan


def test_a_small_data_set_gets_the_step_floor_not_ten_steps():
    cfg = recipe("auto", data="folder:/x")
    plan = make_plan(cfg, steps_per_epoch=5, batch_size=128, train_images=700, val_images=180,
                     seconds_per_step=None)
    assert plan.steps == 1500 and plan.epochs == 300 and plan.limited_by == "min_steps"
    big = make_plan(cfg, steps_per_epoch=800, batch_size=128, train_images=102_400, val_images=1000,
                    seconds_per_step=None)
    assert big.steps == cfg.epochs * 800 and big.limited_by == "epochs"


def test_the_time_budget_cuts_the_steps_and_says_so():
    cfg = recipe("auto", data="folder:/x", time_budget_s=100, time_budget_max_s=None)
    plan = make_plan(cfg, steps_per_epoch=11, batch_size=128, train_images=1437, val_images=360,
                     seconds_per_step=0.5)
    assert plan.limited_by == "time_budget" and plan.steps < 200
    assert plan.expected_s <= 100 and plan.expected_s > 90  # it uses the budget, not a fraction of it
    roomy = make_plan(cfg.replace(time_budget_s=10_000), 5, 128, 700, 180, 0.5)
    assert roomy.steps == 1500 and roomy.limited_by == "min_steps"


def test_a_budget_that_would_cut_the_plan_short_stretches_as_far_as_it_needs_up_to_its_most():
    # real photographs on 2 cores: 2,400 images, 18 steps an epoch, 0.3 s a step; 160 epochs want
    # 2,880 steps, about 15 minutes: 8 would cut them to half
    cfg = recipe("auto", data="folder:/x")
    assert (cfg.time_budget_s, cfg.time_budget_max_s) == (480, 960)
    plan = make_plan(cfg, steps_per_epoch=18, batch_size=128, train_images=2400, val_images=480, seconds_per_step=0.3)
    assert plan.steps == 160 * 18 and plan.limited_by == "epochs"
    assert 480 < plan.expected_s <= 960 and plan.stretched_budget_s == plan.expected_s
    assert "stretched to" in plan.describe(2400)
    slower = make_plan(cfg, 18, 128, 2400, 480, seconds_per_step=0.6)  # the most is not enough: cut there
    assert slower.limited_by == "time_budget" and slower.stretched_budget_s == 960 and 940 < slower.expected_s <= 960
    # the digits: 1,500 steps (the floor) fit 8 minutes, and nothing stretches
    digits = make_plan(cfg, 8, 128, 1149, 288, seconds_per_step=0.17)
    assert digits.steps == 1500 and digits.stretched_budget_s is None and digits.expected_s <= 480
    fixed = make_plan(cfg.replace(time_budget_max_s=None), 18, 128, 2400, 480, 0.3)  # a budget that does not stretch
    assert fixed.limited_by == "time_budget" and fixed.expected_s <= 480 and fixed.stretched_budget_s is None


def test_a_budget_or_steps_a_user_names_do_not_stretch():
    from app.jobspec import JobSpec
    from training.job import config_for

    spec = dict(run_dir="/tmp/r", data="folder:/x", recipe=None)
    assert config_for(JobSpec(**spec, settings={})).time_budget_max_s == 960
    for named in ({"time_budget_s": 600}, {"epochs": 3}, {"min_steps": 60}, {"max_steps": 900}):
        assert config_for(JobSpec(**spec, settings=named)).time_budget_max_s is None, named
    both = config_for(JobSpec(**spec, settings={"time_budget_s": 600, "time_budget_max_s": 1200}))
    assert (both.time_budget_s, both.time_budget_max_s) == (600, 1200)  # unless the user names the most too


@pytest.mark.parametrize("side, expected, stem", [(40, 32, 1), (64, 64, 2), (100, 96, 2), (500, 128, 2)])
def test_the_image_size_and_stem_come_from_the_images(tmp_path, side, expected, stem):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (side + 10 * i, side)).save(tmp_path / c / f"{i}.png")
    cfg = adapt_to_data(recipe("auto", data=f"folder:{tmp_path}"), on_gpu=False)
    assert cfg.image_size == expected and cfg.architecture_kwargs == {"stem_stride": stem}
    explicit = adapt_to_data(recipe("auto", data=f"folder:{tmp_path}", image_size=48), on_gpu=False)
    assert explicit.image_size == 48  # a size the user gave is kept


def test_a_replan_on_a_machine_too_slow_for_the_budget_ends_the_run_where_it_is():
    import torch

    from training.train import replan

    cfg = recipe("auto", data="folder:/x", time_budget_s=100, time_budget_max_s=None)
    plan = make_plan(cfg, 11, 128, 1437, 360, 0.5)
    slow = replan(cfg, plan, 10.0, 1437, 360, 1, torch.device("cpu"), done=50)  # 100 s buys fewer than 50 steps
    assert slow.steps == 50 and slow.epochs == 5 and slow.limited_by == "time_budget"
    assert replan(cfg, plan, 0.5, 1437, 360, 1, torch.device("cpu"), done=50).steps == plan.steps  # room: as planned


def test_the_image_size_is_read_through_linked_folders_as_training_reads_them(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "real" / split / "a").mkdir(parents=True)
        Image.new("RGB", (100, 100)).save(tmp_path / "real" / split / "a" / "0.png")
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / split).symlink_to(tmp_path / "real" / split)  # a view of the images kept elsewhere
    assert adapt_to_data(recipe("auto", data=f"folder:{tmp_path / 'data'}"), on_gpu=False).image_size == 96


def test_shift_scale_augment_moves_and_zooms_but_keeps_the_shape():
    x = torch.zeros(8, 3, 32, 32)
    x[:, :, 12:20, 12:20] = 1.0
    a = shift_scale_augment(x, torch.Generator().manual_seed(0))
    b = shift_scale_augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)  # the same seed, the same views
    assert not torch.allclose(a, x)
    centres = [(torch.nonzero(img[0] > img[0].mean()).float().mean(0)) for img in a]
    assert len({tuple(c.round().tolist()) for c in centres}) > 1  # objects moved by different amounts


def test_epochs_a_user_asks_for_are_what_runs_and_the_data_decide_otherwise():
    from training.cli import _config, build_parser

    def config(*argv):
        return _config(build_parser().parse_args(["train", *argv]))

    mine = config("--data", "folder:/x")
    assert mine.adapt and mine.min_steps == 1500 and mine.time_budget_s == 480  # the auto recipe
    asked = config("--data", "folder:/x", "--epochs", "2")
    assert asked.epochs == 2 and asked.min_steps == 0  # no floor over an explicit choice
    assert config("--data", "folder:/x", "--epochs", "2", "--min-steps", "50").min_steps == 50
    assert config().architecture_kwargs == {"stem_stride": 2} and not config().adapt  # the default model's recipe


class _Flat(torch.utils.data.Dataset):
    """Images of one colour each, with a label."""

    def __init__(self, colours, labels):
        self.items = [(torch.tensor(c, dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8), torch.tensor(y))
                      for c, y in zip(colours, labels)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


PALETTE = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (128, 128, 128)]


def test_colour_is_a_nuisance_when_every_class_comes_in_every_colour():
    from training.plan import adapt_augmentation, colour_tells_classes

    n = 240
    colours = [PALETTE[(i // 2) % len(PALETTE)] for i in range(n)]
    labels = [i % 2 for i in range(n)]  # each colour carries both classes equally often
    data = _Flat(colours, labels)
    assert not colour_tells_classes(data, data)
    cfg = recipe("auto")
    assert adapt_augmentation(cfg, data, data).augment == "shift-scale-colour"
    assert adapt_augmentation(cfg.replace(adapt=False), data, data).augment == "shift-scale"  # a user's choice stays


def test_colour_is_kept_when_it_names_the_class():
    from training.plan import adapt_augmentation, colour_tells_classes

    n = 240
    labels = [i % 3 for i in range(n)]
    colours = [PALETTE[2 * y + (i // 3) % 2] for i, y in enumerate(labels)]  # two colours per class
    data = _Flat(colours, labels)
    assert colour_tells_classes(data, data)
    assert adapt_augmentation(recipe("auto"), data, data).augment == "shift-scale"
    few = _Flat(colours[:12], labels[:12])  # too few validation images to tell: colours left alone
    assert colour_tells_classes(data, few)


class Timer:
    """Stands in for time_steps: the seconds per step it is told, and which precisions were timed."""

    def __init__(self, float32: float, bfloat16: float) -> None:
        self.seconds, self.asked = {False: float32, True: bfloat16}, []

    def __call__(self, bf16: bool, limit_s: float | None) -> float:
        self.asked.append(bf16)
        return self.seconds[bf16] if limit_s is None or self.seconds[bf16] * 4 <= limit_s else float("inf")


@pytest.mark.parametrize("float32, bfloat16, chosen", [(0.6, 0.3, "bfloat16"), (0.6, 0.55, "float32"),
                                                       (0.3, 1.2, "float32")])
def test_a_cpu_trains_in_bfloat16_only_where_it_measured_clearly_faster(float32, bfloat16, chosen):
    cfg = recipe("auto", data="folder:/x")
    timer = Timer(float32, bfloat16)
    precision, seconds = choose_precision(cfg, torch.device("cpu"), True, timer, bf16_possible=True)
    assert precision == chosen and seconds == {"float32": float32, "bfloat16": bfloat16}[chosen]
    assert sorted(timer.asked) == [False, True]
    # a CPU without AVX-512 (AVX2: bf16 emulated, 17x slower) is not even timed in bf16
    timer.asked.clear()
    assert choose_precision(cfg, torch.device("cpu"), True, timer, bf16_possible=False) == ("float32", float32)
    assert timer.asked == [False]
    plan = make_plan(cfg, 11, 128, 1437, 360, seconds, "cpu", precision)
    assert plan.precision == chosen and f"cpu {chosen}" in plan.describe(1437)


def test_precision_asked_for_is_kept_and_an_untimed_cpu_run_stays_float32():
    timer = Timer(0.6, 0.3)
    cfg = recipe("demo")
    assert choose_precision(cfg, torch.device("cpu"), False, timer) == ("float32", None)
    assert choose_precision(cfg.replace(precision="float32"), torch.device("cpu"), True, timer) == ("float32", 0.6)
    assert choose_precision(cfg.replace(precision="bfloat16"), torch.device("cpu"), False, timer) == ("bfloat16", None)
    assert choose_precision(cfg, torch.device("cuda"), False, timer) == ("bfloat16", None)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        choose_precision(cfg.replace(precision="fp16"), torch.device("cpu"), True, timer)


def test_the_end_of_training_is_still_learning_only_where_the_last_fifth_beats_the_fifth_before():
    from training.plan import learning_at_the_end

    rising = [0.5 + 0.01 * i for i in range(20)]  # +1 point an epoch
    flat = [0.8, 0.82] * 10  # noise around a plateau
    assert learning_at_the_end(rising) == {"late_gain": 0.04, "late_epochs": 4, "still_learning": True}
    assert learning_at_the_end(flat)["still_learning"] is False
    assert learning_at_the_end(flat)["late_gain"] == 0.0
    assert learning_at_the_end(rising[:9]) is None  # too few epochs to tell


def _grown(seconds_per_step: float, widths_cost, budget: float = 480, **settings):
    """scale_to_budget on the auto plan of 1,437 images (1,760 steps), a step timed at seconds_per_step
    for resnet20 and widths_cost(first stage width) seconds for each wider network it asks about."""
    from training.plan import scale_to_budget

    settings = {"architecture_kwargs": {"stem_stride": 2}, **settings}
    cfg = recipe("auto", data="folder:/x", time_budget_s=budget, **settings)
    plan = make_plan(cfg, 11, 128, 1437, 360, seconds_per_step)
    asked = []

    def timer(c):
        asked.append(c.architecture_kwargs["widths"])
        return widths_cost(c.architecture_kwargs["widths"][0])

    grown, seconds = scale_to_budget(cfg, plan, timer)
    return cfg, plan, grown, seconds, asked


def test_a_budget_the_steps_fill_keeps_the_network_and_times_nothing_more():
    # 2 CPU cores on the real sets: the budget cuts the steps (0.35 s a step), or holds them with
    # less than 4x to spare (0.1 s a step: 1,500 steps are 150 s of 480)
    for seconds_per_step in (0.35, 0.1):
        cfg, plan, grown, seconds, asked = _grown(seconds_per_step, lambda width: 0.0)
        assert grown == cfg and seconds == plan.seconds_per_step and asked == []


def test_a_budget_with_room_to_spare_widens_the_network_and_fills_the_budget():
    # a GPU: 10 ms a step for resnet20, 12 ms twice as wide, 100 ms four times as wide (1,500 steps
    # of it are 150 s: less than 4x to spare in 480 s, so the plan stops at twice the width)
    cfg, plan, grown, seconds, asked = _grown(0.010, {32: 0.012, 64: 0.100}.get)
    assert asked == [[32, 64, 128], [64, 128, 256]]
    assert grown.architecture_kwargs == {"stem_stride": 2, "widths": [32, 64, 128]} and seconds == 0.012
    filled = make_plan(grown, 11, 128, 1437, 360, seconds)
    assert filled.limited_by == "time_budget" and 470 <= filled.expected_s <= 480
    assert 20 * plan.steps < filled.steps <= 50 * plan.steps and filled.architecture == "resnet20 32/64/128"


def test_the_steps_fill_the_budget_up_to_fifty_times_the_plan_and_no_further():
    cfg, plan, grown, seconds, _ = _grown(0.0001, lambda width: 0.0001)
    assert grown.architecture_kwargs["widths"] == [64, 128, 256]  # both widenings fit
    filled = make_plan(grown, 11, 128, 1437, 360, seconds)
    # 50 x 1,760 steps is exactly 8,000 epochs of 11: the two caps meet, and the plan names either
    assert filled.steps == 50 * plan.steps and filled.limited_by in ("max_steps", "epochs")


def test_a_user_who_names_the_steps_or_the_network_gets_them_as_named():
    from app.jobspec import JobSpec
    from training.job import config_for

    spec = dict(run_dir="/tmp/r", data="folder:/x", recipe=None)
    assert config_for(JobSpec(**spec, settings={})).fill_budget
    for named in ({"epochs": 3}, {"min_steps": 60}, {"max_steps": 900}):
        assert not config_for(JobSpec(**spec, settings=named)).fill_budget, named
    _, plan, grown, _, asked = _grown(0.001, lambda width: 0.001, architecture="resnet20",
                                      architecture_kwargs={"stem_stride": 2, "widths": [16, 16, 16]})
    assert asked == [] and grown.architecture_kwargs["widths"] == [16, 16, 16]  # the steps still fill
    assert grown.max_steps == 50 * plan.steps
