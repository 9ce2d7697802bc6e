"""A pruning study of your own Flax model on your own arrays: register both, then run it.

The study is the command line's (`jaxprune study`): a baseline, one-shot and iterative
magnitude pruning to each target with retraining, results.csv and the report, resumable.
Run it twice: the second run finds everything trained and only reports.
"""

import sys

import flax.linen as nn
import numpy as np

from jaxprune import config, export, models
from jaxprune.data import sources as data
from jaxprune.api import run_study


class SmallCNN(nn.Module):
    """Two conv layers and a dense head; `width` scales the channels."""

    num_classes: int
    width: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(self.width, (3, 3), strides=2, name="conv1")(x))
        x = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=2, name="conv2")(x))
        return nn.Dense(self.num_classes, name="head")(x.mean((1, 2)))


# 1. The model: a factory of (num_classes, width, dtype). Its conv and dense kernels are
#    what gets pruned, found by the mask library's default filter.
models.register("small_cnn", lambda num_classes, width, dtype: SmallCNN(num_classes, width), width=8)

# 2. The data: uint8 images (N, 32, 32, 3) and labels in [0, num_classes). Here four
#    classes, each a brightness band with noise; yours would come from disk.
rng = np.random.default_rng(0)


def split(n):
    labels = rng.integers(0, 4, n)
    images = np.clip(40 + 50 * labels[:, None, None, None] + rng.normal(0, 30, (n, 32, 32, 3)), 0, 255)
    return images.astype(np.uint8), labels.astype(np.int32)


train_x, train_y = split(512)
test_x, test_y = split(128)
data.register_arrays("bands", data.Dataset(train_x, train_y, test_x, test_y, source="bands", num_classes=4))

# 3. The study: the smoke preset's short recipe on them, two targets.
cfg = config.study_preset(
    "smoke", train={"model": "small_cnn", "data": "bands", "batch_size": 64, "eval_batch_size": 128,
                    "progress": False},
    targets=(0.5, 0.8), methods=("magnitude",), baseline_epochs=2, round_epochs=1,
)
workdir = sys.argv[1] if len(sys.argv) > 1 else "runs/custom-model-study"
results = run_study(cfg, workdir)
print(f"results: {results}")

# 4. The last round's weights and masks, in safetensors under their Flax paths (a model
#    of your own has no PyTorch twin). Its folder is new each time: an export replaces only
#    a previous export.
info = export.export(f"{workdir}/iterative-magnitude-0.80/round-03", f"{workdir}/export")
print(f"exported: sparsity {info['sparsity']['global']:.4f}, keys {sorted(info['sparsity']['layers'])}")
