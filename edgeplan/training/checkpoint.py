"""Per-stage checkpoints at epoch ends, resume, and assembly of the full model's state_dict.

Every rank writes its own file ``epoch-NNNN/stage-S.replica-J.pt`` (weights
under the original model's keys, optimizer state, epoch), so boards with no
shared file system can each resume from their own disk; the ranks agree on the
newest epoch all of them hold. These files stay on the training side
(torch.save of tensors and plain data); nothing here is sent over the wire.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from edgeplan.errors import ArtifactError
from edgeplan.training.routing import RankInfo

STATE_DICT_FILE = "model_state_dict.pt"
_EPOCH = re.compile(r"^epoch-(\d{4,})$")


def rank_file(ckpt_dir: Path, epoch: int, me: RankInfo) -> Path:
    return Path(ckpt_dir) / f"epoch-{epoch:04d}" / f"stage-{me.stage}.replica-{me.replica}.pt"


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(ckpt_dir: Path, epoch: int, me: RankInfo, state: dict[str, torch.Tensor], optimizer: dict,
         extra: dict) -> Path:
    """``state`` is keyed by the original model's names (see engine's key map)."""
    path = rank_file(ckpt_dir, epoch, me)
    _atomic_save({"epoch": epoch, "stage": me.stage, "replica": me.replica, "device": me.device,
                  "state": {k: v.detach().cpu() for k, v in state.items()}, "optimizer": optimizer,
                  "extra": extra}, path)
    return path


def epochs_held(ckpt_dir: Path, me: RankInfo) -> list[int]:
    """Epochs for which this rank's own checkpoint file exists, ascending."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _EPOCH.match(p.name)
        if m and rank_file(d, int(m.group(1)), me).exists():
            out.append(int(m.group(1)))
    return sorted(out)


def load(ckpt_dir: Path, epoch: int, me: RankInfo) -> dict:
    path = rank_file(ckpt_dir, epoch, me)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise ArtifactError(f"{path}: cannot read checkpoint of {me.label} ({e}); delete the epoch folder "
                            "to resume from the one before") from e


def assemble(ckpt_dir: Path, epoch: int, ranks: tuple[RankInfo, ...],
             reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Merge the stages' checkpoints of ``epoch`` (first replica each) into one state_dict.

    ``reference`` is the original module's state_dict: the result has exactly
    its keys, shapes and dtypes, so ``model.load_state_dict(result)`` works in
    strict mode. A key no stage owns is reported, not silently taken from the
    initial weights.
    """
    merged: dict[str, torch.Tensor] = {}
    for r in ranks:
        if r.replica != 0 and not r.input:  # replicas of a branch stage hold different branches: all count
            continue
        merged.update(load(ckpt_dir, epoch, r)["state"])
    missing = sorted(set(reference) - set(merged))
    extra = sorted(set(merged) - set(reference))
    if missing or extra:
        raise ArtifactError(
            f"{ckpt_dir}/epoch-{epoch:04d}: stages' weights do not match the model's state_dict "
            f"(missing {missing[:5]}, unexpected {extra[:5]}); the checkpoints come from another model or plan"
        )
    for k, v in reference.items():
        if merged[k].shape != v.shape:
            raise ArtifactError(f"{ckpt_dir}: {k} has shape {tuple(merged[k].shape)} in the checkpoint but "
                                f"{tuple(v.shape)} in the model")
        merged[k] = merged[k].to(v.dtype)
    return {k: merged[k] for k in reference}


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> Path:
    _atomic_save(state, Path(path))
    return Path(path)
