"""A Flax Linen CNN pruned with ERK quotas, trained with AdamW, then pruned further inside jit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3), name="stem_conv")(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2, name="conv1")(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=2, name="conv2")(x))
        x = nn.relu(nn.Dense(64, name="fc")(x.mean((1, 2))))
        return nn.Dense(10, name="head")(x)


model = CNN()
x = jax.random.normal(jax.random.key(0), (64, 16, 16, 3))
y = jax.random.randint(jax.random.key(1), (64,), 0, 10)
params = model.init(jax.random.key(2), x)["params"]
masks = jaxprune.init_masks(params, jaxprune.exclude("stem_conv", "head"))  # those stay dense
masks = jaxprune.prune(params, masks, sparsity=0.7, distribution="erk", score="magnitude")
params = jaxprune.apply_masks(params, masks)
tx = optax.chain(optax.adamw(3e-3, weight_decay=1e-4), jaxprune.keep_pruned(masks))
opt_state = tx.init(params)


@jax.jit
def train_step(params, opt_state, prune_to):
    def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    # Gradual pruning on the device (here every step; Zhu & Gupta: every Δt steps):
    # prune globally to `prune_to`, a no-op when that many are pruned already.
    masks = jaxprune.update_masks_on_device(params, opt_state[1].masks, prune_to)
    return jaxprune.apply_masks(params, masks), jaxprune.update_masks(opt_state, masks), loss


losses = []
for step in range(60):
    params, opt_state, loss = train_step(params, opt_state, jnp.float32(0.7 if step < 30 else 0.85))
    losses.append(float(loss))
masks = opt_state[1].masks
print(jaxprune.sparsity_report(masks))
print(f"sparsity {jaxprune.sparsity(masks):.4f}")
print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
pruned_values = [np.asarray(p)[~np.asarray(m)] for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)) if np.ndim(m)]
print(f"pruned weights all +0.0: {all(np.all(v == 0) and not np.any(np.signbit(v)) for v in pruned_values)}")
