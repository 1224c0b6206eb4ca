"""Profile and cluster documents before validation: YAML read, ``extends`` resolved, overrides merged,
and the origin (file, field prefix) of every merged value kept, so that ``load``'s errors name the
file and field a bad value came from.

``extends: <id or path>`` deep-merges a file over its base: mappings merge key by key,
everything else (numbers, strings, lists) replaces. Built-in profiles are
``boards/<vendor>/<id>.yaml`` (BOARDS_DIR), found by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from edgeplan.errors import ProfileError

BOARDS_DIR = Path(__file__).parent / "boards"


@dataclass(frozen=True)
class Src:
    """Where a merged value came from: the file and the field prefix it sits under there."""

    file: str
    prefix: str = ""


def fmt_path(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class Doc:
    """A merged mapping plus the origin of each value, so errors name the right file and field."""

    def __init__(self, data: dict, origins: dict[tuple, Src]):
        self.data = data
        self.origins = origins

    def file_of(self, path: tuple) -> str | None:
        """The file the value at ``path`` came from (None: not in any)."""
        for n in range(len(path), -1, -1):
            src = self.origins.get(path[:n])
            if src is not None:
                return src.file
        return None

    def where(self, path: tuple) -> str:
        for n in range(len(path), -1, -1):
            src = self.origins.get(path[:n])
            if src is not None:
                field = fmt_path(path)
                full = f"{src.prefix}.{field}" if src.prefix and field else (src.prefix or field)
                return f"{src.file}: {full}" if full else src.file
        return "<profile>"

    def fail(self, path: tuple, msg: str) -> ProfileError:
        return ProfileError(f"{self.where(path)}: {msg}")


def merge(base: dict, over: dict, origins: dict[tuple, Src], src: Src, path: tuple = ()) -> dict:
    out = dict(base)
    for key, value in over.items():
        p = path + (key,)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, origins, src, p)
        else:
            for stale in [q for q in origins if q[: len(p)] == p]:
                del origins[stale]
            out[key] = value
            origins[p] = src
    return out


def read_yaml(path: Path, what: str) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise ProfileError(f"{path}: no such {what} file") from e
    except OSError as e:
        raise ProfileError(f"{path}: cannot read {what} file ({e.strerror})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProfileError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from e
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a {what} file must be a YAML mapping, got {type(data).__name__}")
    return data


def builtin_index() -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(BOARDS_DIR.glob("*/*.yaml")):
        if path.stem in index:
            raise ProfileError(f"{path}: profile id {path.stem!r} is also defined by {index[path.stem]}; rename one")
        index[path.stem] = path
    return index


def shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(BOARDS_DIR.resolve().parent))
    except ValueError:
        return str(path)


def find(ref: str, base_dir: Path | None, index: dict[str, Path]) -> Path | None:
    if ref in index:
        return index[ref]
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        p = Path(ref)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        return p if p.exists() else None
    return None


def valid_ids(index: dict[str, Path]) -> str:
    return ", ".join(sorted(i for i in index if not is_abstract(index[i])))


def is_abstract(path: Path) -> bool:
    try:
        return bool(yaml.safe_load(path.read_text()).get("abstract", False))
    except Exception:  # a broken file is reported when it is loaded, not while listing
        return False


def resolve(path: Path, index: dict[str, Path], chain: tuple[str, ...] = ()) -> tuple[Doc, str]:
    """Read a profile file and the files it extends; returns the merged document and its id."""
    pid = path.stem
    shown = shown_path(path)
    key = str(path.resolve())
    if key in chain:
        names = [Path(c).stem for c in chain[chain.index(key):]] + [pid]
        raise ProfileError(f"{shown}: extends: cycle {' -> '.join(names)}; remove one `extends`")
    data = read_yaml(path, "profile")
    src = Src(shown)
    base_ref = data.get("extends")
    if base_ref is None:
        origins: dict[tuple, Src] = {(): src}
        merged = merge({}, data, origins, src)
    else:
        if not isinstance(base_ref, str):
            raise ProfileError(f"{shown}: extends: {base_ref!r} is not a profile id or path")
        base_path = find(base_ref, path.parent, index)
        if base_path is None:
            raise ProfileError(
                f"{shown}: extends: unknown profile {base_ref!r}; valid ids: {', '.join(sorted(index))} "
                "(or a path to a profile file)")
        base, _ = resolve(base_path, index, chain + (key,))
        origins = dict(base.origins)
        merged = merge(base.data, data, origins, src)
    origins[()] = src  # fields missing from the merged profile are reported against the most derived file
    merged.pop("extends", None)
    merged["abstract"] = bool(data.get("abstract", False))  # a base's abstract flag is not inherited
    origins[("abstract",)] = src
    return Doc(merged, origins), pid
