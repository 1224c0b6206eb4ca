"""Single-process training on the same data order: the baseline hybrid training is compared with.

Same seeded sample order, same global batches, same optimizer, mean loss over
the global batch: in ``sync`` mode a hybrid run of a model without BatchNorm
computes the same updates (up to float summation order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeplan.training import data
from edgeplan.training.config import TrainConfig


def train_single(model: nn.Module, dataset: data.Dataset, batch: int, config: TrainConfig) -> list[dict]:
    """Train ``model`` in place for ``config.epochs``; one row per epoch (loss, accuracy, test accuracy)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                          momentum=config.momentum, weight_decay=config.weight_decay)
    n = len(dataset.x_train)
    iters = data.iterations(n, batch)
    if config.max_iters:
        iters = min(iters, config.max_iters)
    rows = []
    for epoch in range(config.epochs):
        model.train()
        order = data.epoch_order(n, config.seed, epoch)
        loss_sum, correct = 0.0, 0
        for it in range(iters):
            idx = order[it * batch:(it + 1) * batch]
            x, y = torch.from_numpy(dataset.x_train[idx]), torch.from_numpy(dataset.y_train[idx])
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == y).sum())
        rows.append({"epoch": epoch + 1, "loss": loss_sum / (iters * batch), "accuracy": correct / (iters * batch),
                     "test_accuracy": evaluate(model, dataset)})
    return rows


@torch.no_grad()
def evaluate(model: nn.Module, dataset: data.Dataset, chunk: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(dataset.x_test), chunk):
        out = model(torch.from_numpy(dataset.x_test[i:i + chunk]))
        correct += int((out.argmax(1) == torch.from_numpy(dataset.y_test[i:i + chunk])).sum())
    return correct / max(len(dataset.x_test), 1)
