"""The multistep schedule and the linear warm-up, step by step against the torch schedulers
they mirror: MultiStepLR stepped once per epoch, and open_lth's LambdaLR stepped once per
iteration (training/optimizers.py get_lr_schedule: gamma ** bisect(milestones, it) times
min(1, it / warmup_iters))."""

import bisect

import numpy as np
import pytest

from jaxprune import config
from jaxprune.training import train

STEPS = 5  # SGD steps per epoch


def torch_lrs(make_scheduler, steps: int, per_iteration: bool) -> list[float]:
    """The lr of each of `steps` SGD steps under a torch scheduler."""
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sched = make_scheduler(torch, opt)
    out = []
    for step in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_iteration or (step + 1) % STEPS == 0:
            sched.step()
    return out


def ours(cfg: config.TrainConfig, steps: int) -> tuple[list[float], list[float]]:
    """Our lr per step: traced (as the train step sees it) and on the host (epoch_lr, per epoch)."""
    schedule = train.learning_rate(cfg, STEPS)
    traced = [float(schedule(np.int32(t))) for t in range(steps)]
    host = [train.epoch_lr(cfg, STEPS, e) for e in range(1, steps // STEPS + 1)]
    return traced, host


def test_multistep_is_torchs_multisteplr_per_epoch():
    cfg = config.TrainConfig(schedule="multistep", milestones=(2, 4), gamma=0.1, epochs=6)
    expected = torch_lrs(lambda torch, opt: torch.optim.lr_scheduler.MultiStepLR(opt, [2, 4], 0.1), 6 * STEPS, False)
    traced, host = ours(cfg, 6 * STEPS)
    np.testing.assert_allclose(traced, expected, rtol=1e-6)
    np.testing.assert_allclose(host, expected[::STEPS], rtol=1e-12)  # float64 on the host
    assert [round(x, 6) for x in host] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_open_lths_milestones_and_warmup_per_iteration():
    """open_lth with milestone_steps '2ep,4ep', gamma 0.1 and warmup_steps '7it'."""
    milestones = [2 * STEPS, 4 * STEPS]

    def lam(it):
        return 0.1 ** bisect.bisect(milestones, it) * min(1.0, it / 7)

    expected = torch_lrs(lambda torch, opt: torch.optim.lr_scheduler.LambdaLR(opt, lam), 6 * STEPS, True)
    cfg = config.TrainConfig(schedule="multistep", milestones=(2, 4), gamma=0.1, warmup_steps=7, epochs=6)
    traced, _ = ours(cfg, 6 * STEPS)
    np.testing.assert_allclose(traced, expected, rtol=1e-6, atol=1e-12)
    assert traced[0] == 0.0 and traced[7] == pytest.approx(0.1)


def test_warmup_and_milestones_count_from_the_schedule_start():
    """An lr-rewind phase replaying epochs 3.. of a warmed-up multistep schedule sees those epochs' lrs."""
    full = config.TrainConfig(schedule="multistep", milestones=(2, 4), warmup_steps=12, epochs=6)
    late = config.TrainConfig(schedule="multistep", milestones=(2, 4), warmup_steps=12, epochs=3, schedule_start=3)
    np.testing.assert_allclose(ours(late, 3 * STEPS)[0], ours(full, 6 * STEPS)[0][3 * STEPS:], rtol=1e-6)


@pytest.mark.parametrize("changes, message", [
    ({"schedule": "multistep"}, "--milestones and --schedule multistep go together"),
    ({"milestones": (80,)}, "--milestones and --schedule multistep go together"),
    ({"schedule": "multistep", "milestones": (120, 80)}, "must be increasing epochs > 0"),
    ({"schedule": "multistep", "milestones": (0, 80)}, "must be increasing epochs > 0"),
    ({"gamma": 0.0}, "--gamma must be a finite number > 0"),
    ({"warmup_steps": -1}, "--warmup-steps must be >= 0"),
])
def test_bad_schedule_settings_are_refused(changes, message):
    with pytest.raises(config.ConfigError, match=message):
        config.TrainConfig(data="synthetic:64,16", **changes).validate()
