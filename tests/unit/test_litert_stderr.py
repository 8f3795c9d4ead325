"""LiteRT's notice on stderr (sdk/litert.py, docs/tflite.md "The runner"): fd 2 is redirected while an
interpreter is warmed up, and fd 2 is the process's. Sessions loading in several threads at once
(an agent's steps, an app's sessions) must leave stderr where it was and lose nothing written to it.
Real threads and real file descriptors; no LiteRT needed for what is tested here."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import pytest

from edgepart.litert import _delegate_notice_to_debug

NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"


@contextlib.contextmanager
def stderr_to(path):
    """fd 2 pointed at a file of the test's own (inside the test: pytest points fd 2 at its own
    capture at the start of each phase), restored after whatever happens."""
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield path
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def test_threads_redirecting_at_once_leave_stderr_where_it_was_and_lose_nothing(tmp_path, caplog):
    n = 8
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def load(i: int) -> None:
        try:
            start.wait(10)
            with _delegate_notice_to_debug():
                os.write(2, NOTICE)
                time.sleep(0.02)  # a warm-up run takes a while: the others arrive meanwhile
                os.write(2, f"thread {i} says something else\n".encode())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with caplog.at_level(logging.DEBUG, "edgepart"), stderr_to(tmp_path / "stderr.txt") as stderr_file:
        threads = [threading.Thread(target=load, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        same = os.fstat(2).st_ino == os.stat(stderr_file).st_ino
        os.write(2, b"after\n")
    assert not errors, errors
    assert same, "fd 2 no longer is the process's stderr"
    text = stderr_file.read_text()
    assert sorted(ln for ln in text.splitlines() if ln.startswith("thread")) == sorted(
        f"thread {i} says something else" for i in range(n)), text
    assert text.endswith("after\n") and "INFO: Created" not in text, text
    assert sum("INFO: Created TensorFlow Lite" in r.getMessage() for r in caplog.records) == n


def test_stderr_is_restored_when_the_run_inside_fails(tmp_path):
    with stderr_to(tmp_path / "stderr.txt") as stderr_file:
        with pytest.raises(RuntimeError, match="boom"):
            with _delegate_notice_to_debug():
                os.write(2, b"before the failure\n")
                raise RuntimeError("boom")
        same = os.fstat(2).st_ino == os.stat(stderr_file).st_ino
        with _delegate_notice_to_debug():  # and the next one is not locked out
            pass
    assert same
    assert stderr_file.read_text() == "before the failure\n"
