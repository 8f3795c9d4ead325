"""LiteRT (TFLite) sessions for the steps a plan runs on TFLite (docs/tflite.md, "The runner").

A TFLite step computes what its ONNX twin does, in TFLite's layout: the converter turns NCHW into
NHWC. The wire always carries the plan's (ONNX) layout, so the session transposes at its edge: each
input by its `perm` (tflite = plan.transpose(perm)) before the signature runner, each output back by
the inverse perm after it. Its `run(output_names, feeds)` has onnxruntime's call shape, so the
executor runs either kind of step the same way.

`ai-edge-litert` (the `litert` extra) is preferred; `tflite-runtime`, frozen at TensorFlow 2.14 and
numpy<2, is the fallback for devices that have only it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import BundleError, MissingExtraError

log = logging.getLogger("edgepart")

_PACKAGES = (("ai-edge-litert", "ai_edge_litert.interpreter"), ("tflite-runtime", "tflite_runtime.interpreter"))


def litert_runtime() -> str | None:
    """Which TFLite runtime is installed: "ai-edge-litert" (preferred), "tflite-runtime", or None."""
    for package, module in _PACKAGES:
        try:
            if importlib.util.find_spec(module.split(".")[0]) is not None:
                return package
        except (ImportError, ValueError):
            continue
    return None


# fd 2 is the process's, not a thread's: two sessions loading at once would each save the other's
# redirection as "the" stderr and restore it, leaving stderr pointing at a deleted temporary file
_stderr_lock = threading.Lock()


@contextlib.contextmanager
def _delegate_notice_to_debug():
    """LiteRT's C++ side writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to
    the process's stderr for every interpreter (no setting turns it off). Catch what fd 2 receives
    meanwhile: that notice goes to the debug log, anything else back to stderr, so nothing is lost.
    One thread at a time (`_stderr_lock`), and fd 2 is restored whatever happens inside."""
    with _stderr_lock:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to redirect
            yield
            return
        try:
            tmp = tempfile.TemporaryFile()
        except OSError:  # nowhere to catch it: let the notice through
            os.close(saved)
            yield
            return
        try:
            os.dup2(tmp.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            try:
                tmp.seek(0)
                text = tmp.read().decode(errors="replace")
            finally:
                tmp.close()
            for line in text.splitlines(keepends=True):
                if line.startswith("INFO: Created TensorFlow Lite"):
                    log.debug("%s", line.strip())
                else:
                    os.write(2, line.encode())


def _interpreter_class() -> type:
    """The Interpreter of the first runtime that imports (tflite-runtime fails to under numpy 2)."""
    for _, module in _PACKAGES:
        try:
            return importlib.import_module(module).Interpreter
        except ImportError:
            continue
    raise MissingExtraError.for_extra("litert", "Running a TFLite step", "ai_edge_litert")


class TFLiteSession:
    """One TFLite step: its signature runner, the plan's names and layouts at its edge, and a lock (a
    LiteRT interpreter is not thread-safe; the agent may run a step for two requests at once)."""

    def __init__(self, path: Path | str, io: Sequence[Any], threads: int = 0) -> None:
        self.path = Path(path)
        Interpreter = _interpreter_class()
        try:
            # num_threads reaches the XNNPACK delegate, which LiteRT applies by default on CPU
            self._interp = Interpreter(model_path=str(self.path), num_threads=threads if threads > 0 else None)
            signatures = self._interp.get_signature_list()
            if not signatures:
                raise ValueError("the file has no signature (it was not written by edgepart's converter)")
            self.signature = next(iter(signatures))
            self._runner = self._interp.get_signature_runner(self.signature)
        except (ValueError, RuntimeError, OSError) as e:
            raise BundleError(f"Cannot load the TFLite step {self.path}: {e}. Package the model again, or run "
                              f"the step on onnxruntime (package with --format onnx).") from None
        sig = signatures[self.signature]
        keys_in, keys_out = set(sig["inputs"]), set(sig["outputs"])
        in_details = self._runner.get_input_details()
        self._inputs: dict[str, tuple[str, tuple[int, ...], np.dtype]] = {}
        self._outputs: dict[str, tuple[str, tuple[int, ...]]] = {}
        for t in io:
            perm = tuple(int(a) for a in t.perm)
            if t.key in keys_in:
                self._inputs[t.name] = (t.key, perm, np.dtype(in_details[t.key]["dtype"]))
            elif t.key in keys_out:
                self._outputs[t.name] = (t.key, tuple(int(a) for a in np.argsort(perm)) if perm else ())
            else:
                raise BundleError(f"The TFLite step {self.path} has no tensor {t.key!r} (for {t.name!r}) in its "
                                  f"signature {self.signature!r}; the plan and the file disagree: package again.")
        missing = keys_in - {k for k, _, _ in self._inputs.values()}
        if missing:
            raise BundleError(f"The plan maps no tensor to the inputs {sorted(missing)} of the TFLite step "
                              f"{self.path}; package again.")
        self._lock = threading.Lock()
        self._warm_up(in_details)

    def _warm_up(self, details: Mapping[str, Any]) -> None:
        """One run on made-up inputs at load: LiteRT creates its XNNPACK delegate on the first run
        (and says so on stderr, caught here), so the first request does not pay for it."""
        feeds = {}
        for key, d in details.items():
            dt = np.dtype(d["dtype"])
            feeds[key] = (np.zeros if dt.kind == "f" else np.ones)(tuple(int(x) for x in d["shape"]), dt)
        try:
            with _delegate_notice_to_debug():
                self._runner(**feeds)
        except (ValueError, RuntimeError) as e:  # made-up inputs may not fit (a size read from an input)
            log.debug("TFLite step %s: no warm-up run (%s)", self.path.name, e)

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs named (all, in the plan's order, for None), in the plan's layout."""
        names = list(self._outputs) if output_names is None else list(output_names)
        unknown = [n for n in names if n not in self._outputs]
        if unknown:
            raise ValueError(f"{self.path.name} has no outputs {unknown}; it has {list(self._outputs)}")
        args = {}
        for name, (key, perm, dtype) in self._inputs.items():
            if name not in feeds:
                raise ValueError(f"{self.path.name}: missing input {name!r}")
            x = np.asarray(feeds[name])
            if perm:
                x = x.transpose(perm)
            args[key] = _contiguous(x, dtype)
        with self._lock:
            res = self._runner(**args)
        out = []
        for n in names:
            key, inv = self._outputs[n]
            y = res[key]
            out.append(_contiguous(y.transpose(inv) if inv else y))
        return out


def _contiguous(x: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """`x` as a C-contiguous array of `dtype`, a copy only where needed; unlike
    np.ascontiguousarray, a scalar (0-d) tensor stays 0-d."""
    return np.asarray(x, dtype=dtype, order="C")


def make_tflite_session(path: Path | str, io: Sequence[Any], threads: int = 0) -> TFLiteSession:
    """A session for one TFLite step file whose tensors meet the plan through `io` (TensorIO's), with
    onnxruntime's `run(output_names, feeds)`; `threads` > 0 sets LiteRT's (XNNPACK's) thread count."""
    return TFLiteSession(path, io, threads)


__all__ = ["TFLiteSession", "litert_runtime", "make_tflite_session"]
