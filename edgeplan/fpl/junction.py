"""The junction layer of flexible parallel learning: a learned, weighted mean of the branches' features.

Its source text is copied verbatim into every file ``edgeplan fpl`` writes (so that
file needs only torch); this module is the one definition.
"""

import torch
from torch import nn


class Junction(nn.Module):
    """Joins K branches' aligned features (same shape) into one tensor for the trunk.

    ``weights`` holds one learned logit per branch; the output is
    ``sum_i softmax(weights)_i * features[i]`` over the branches that are present.
    A branch whose source has no data (its board left) is masked out with
    ``set_present``: its weight becomes exactly 0 and the others are renormalised,
    so its feature (pass zeros) neither reaches the trunk nor gets a gradient.
    ``mixture()`` is the weight each branch gets now (what a user reads).
    """

    def __init__(self, k: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(k))
        # a frozen parameter, not a buffer, so torch.fx keeps the mask as an input of the traced graph
        # (a buffer is folded into a constant) and training can change it between epochs
        self.present = nn.Parameter(torch.ones(k), requires_grad=False)

    def set_present(self, present) -> None:
        """Which branches take part (a sequence of K bools); at least one must."""
        mask = torch.as_tensor([1.0 if p else 0.0 for p in present], dtype=self.present.dtype)
        if mask.numel() != self.present.numel() or float(mask.sum()) == 0.0:
            raise ValueError(f"junction: give one flag per branch ({self.present.numel()}), at least one true")
        with torch.no_grad():
            self.present.copy_(mask.to(self.present.device))

    def mixture(self) -> torch.Tensor:
        logits = self.weights.masked_fill(self.present == 0, float("-inf"))
        return torch.softmax(logits, 0)

    def forward(self, *features):
        w = self.mixture()
        out = features[0] * w[0]
        for i in range(1, len(features)):
            out = out + features[i] * w[i]
        return out
