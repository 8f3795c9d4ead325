"""Model inputs: read an inputs.npz (input name -> array), or make random ones from the model's specs."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import InputsError
from .plan import TensorSpec


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise InputsError(f"{path} does not exist. Save inputs with numpy.savez('inputs.npz', input_name=array).")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise InputsError(f"{path} is not a numpy .npz of arrays ({e}). Save it with numpy.savez.") from None


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


def shapes_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(int(d) for d in v.shape) for k, v in arrays.items()}


def random_inputs(specs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for the model: normal floats, small non-negative ints, at `shapes` where given."""
    rng = np.random.default_rng(seed)
    shapes = dict(shapes or {})
    out = {}
    for s in specs:
        shape = tuple(shapes.get(s.name) or (d if _fixed(d) else 1 for d in s.shape))
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            out[s.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            out[s.name] = rng.integers(0, 2, size=shape).astype(dt)
        elif dt.kind == "b":
            out[s.name] = np.ones(shape, dtype=dt)
        else:
            raise InputsError(f"Cannot make a random input for {s.name!r} of type {s.dtype}; give --inputs.")
    return out


def check_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> None:
    names = {s.name for s in specs}
    missing = names - set(feeds)
    extra = set(feeds) - names
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(sorted(missing))}")
        if extra:
            parts.append(f"unknown {', '.join(sorted(extra))}")
        raise InputsError(f"The inputs do not match the model ({'; '.join(parts)}). The model takes: {', '.join(sorted(names))}.")
    for s in specs:
        a = feeds[s.name]
        if a.dtype != np.dtype(s.dtype):
            raise InputsError(f"Input {s.name!r} is {a.dtype}, the model takes {s.dtype}. Convert it with .astype({s.dtype!r}).")
        if len(a.shape) != len(s.shape) or any(_fixed(d) and d != v for d, v in zip(s.shape, a.shape)):
            raise InputsError(f"Input {s.name!r} has shape {list(a.shape)}, the model takes {list(s.shape)}.")


def _fixed(d) -> bool:
    """A fixed size: a positive int. A name, "?" or a non-positive int (PaddlePaddle's -1) is symbolic."""
    return isinstance(d, int) and d > 0
