"""The write-up's training, step for step against PyTorch itself, in float64.

Masked SGD with momentum and weight decay, the per-epoch cosine schedule, the
partial last batch and BatchNorm's running statistics, on the same weights and
the same batches, with no augmentation: jaxprune must equal torch.optim.SGD +
CosineAnnealingLR + torch.nn.utils.prune.global_unstructured to float64
rounding. Runs in a subprocess because float64 needs jax_enable_x64 set at start.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # it trains, in a process of its own
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np, torch
from torch.nn.utils import prune
from jaxprune import config, export, masks as masks_lib
from jaxprune.data import sources as data
from jaxprune.training import train
from jaxprune.models import ResNet18, init_variables
from tests.torch_resnet import ResNet18 as TorchResNet18

torch.set_default_dtype(torch.float64)
WIDTH, BATCH, EPOCHS = 4, 16, 2
ds = data.synthetic(5 * BATCH + 8, 8)  # 5 full batches and one of 8 images per epoch
# steps_per_dispatch 2 over 5 full batches: scan chunks of 2, 2 and a ragged 1, then the partial batch.
cfg = config.TrainConfig(data="synthetic:1", width=WIDTH, epochs=EPOCHS, batch_size=BATCH, augment=False,
                         steps_per_dispatch=2, progress=False)
assert cfg.schedule == "epoch-cosine" and cfg.t_max == 200 and not cfg.drop_last  # the write-up's defaults

f64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
variables = f64(init_variables(ResNet18(width=WIDTH), 0))
masks = masks_lib.prune_global(variables["params"], masks_lib.init_masks(variables["params"]), 0.5)
model = ResNet18(width=WIDTH, dtype=jnp.float64)
n_steps = train.steps_per_epoch(cfg, len(ds.train_labels))
assert n_steps == 6
tx = train.make_optimizer(cfg, n_steps)
fns = train.make_step_fns(model, tx, cfg)
state = train.create_train_state(variables, tx, 0, masks)

# torch: the same weights, pruned by torch's own global magnitude pruning.
net = TorchResNet18(width=WIDTH)
net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in export.to_torch_state_dict(
    variables["params"], variables["batch_stats"]).items()})
convs = [(m, "weight") for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
prune.global_unstructured(convs, pruning_method=prune.L1Unstructured, amount=0.5)
ours = export.masks_state_dict(masks)
for name, module in net.named_modules():
    if hasattr(module, "weight_mask"):
        assert np.array_equal(module.weight_mask.numpy().astype(bool), ours[name + ".weight"]), name
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
loss_fn = torch.nn.CrossEntropyLoss()
# Exactly what the jitted step feeds the model: under jit XLA divides by 255
# as a multiplication, a last-bit difference this small network amplifies.
x_all = np.asarray(jax.jit(data.normalize)(ds.train_images), np.float64).transpose(0, 3, 1, 2)
net.train()
lrs = []
for epoch in range(1, EPOCHS + 1):
    full, rest = jax.device_get(fns.epoch_batches(state, epoch, len(ds.train_labels)))
    assert full.shape == (5, BATCH) and rest.shape == (8,)
    lrs.append(opt.param_groups[0]["lr"])
    for idx in [*full, rest]:
        loss = loss_fn(net(torch.from_numpy(x_all[idx])), torch.from_numpy(ds.train_labels[idx].astype(np.int64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    sched.step()
    state, m = fns.train_epoch(state, ds.train_images, ds.train_labels, epoch)

assert int(state.step) == EPOCHS * n_steps
for e, lr in enumerate(lrs, start=1):
    assert abs(train.epoch_lr(cfg, n_steps, e) - lr) < 1e-15, (e, lr)
# Scan carries and counts kept their dtypes with x64 on.
assert state.step.dtype == jnp.int32 and m["train_loss"].dtype == jnp.float32

got = export.to_torch_state_dict(state.params, state.batch_stats, dtype=np.float64)
ref = {k: v.detach().numpy() for k, v in net.state_dict().items()}
for name, module in net.named_modules():
    if hasattr(module, "weight_mask"):  # torch trains weight_orig and uses orig * mask (its .weight
        ref[name + ".weight"] = (module.weight_orig * module.weight_mask).detach().numpy()  # is one step stale)
worst = {}
for k, v in got.items():
    if k.endswith("num_batches_tracked"):
        continue
    r = ref[k]
    assert v.shape == r.shape, k
    worst[k] = float(np.max(np.abs(v - r)) / max(1.0, float(np.max(np.abs(r)))))
    if k in ours:
        assert (v[~ours[k]] == 0).all() and (r[~ours[k]] == 0).all(), k  # pruned: exactly 0 on both sides
        start = export.to_torch_state_dict(variables["params"], variables["batch_stats"], dtype=np.float64)[k]
        moved = np.abs(v[ours[k]] - start[ours[k]])
        assert (moved > 0).mean() > 0.9, k  # kept weights trained
stats = [k for k in worst if "running" in k]
print("worst param diff", max(v for k, v in worst.items() if k not in stats))
print("worst running-stat diff", max(worst[k] for k in stats))
assert max(worst.values()) < 1e-10, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
print("ok")
"""


def test_masked_sgd_epochs_equal_torch_in_float64():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "JAX_ENABLE_X64": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.strip().endswith("ok"), result.stdout
