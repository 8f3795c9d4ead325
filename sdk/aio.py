"""One background event loop per process, shared by every sync facade (Agent, InferenceSession).

The async cores are written once; the sync classes submit coroutines to this loop. Sharing one
loop means an app that embeds an agent and calls the cluster pays for one network thread, not
two, and their hand-offs need no thread switch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_users = 0


def acquire() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use; pair every acquire() with a release()."""
    global _loop, _thread, _users
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_loop.run_forever, name="edgepart-loop", daemon=True)
            _thread.start()
        _users += 1
        return _loop


def release() -> None:
    """Stop the loop's thread when its last user is gone."""
    global _loop, _thread, _users
    with _lock:
        _users -= 1
        if _users > 0 or _loop is None:
            return
        loop, thread = _loop, _thread
        _loop, _thread = None, None
    loop.call_soon_threadsafe(loop.stop)
    if thread is not None and thread is not threading.current_thread():
        thread.join(10)
        loop.close()


def submit(coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
    assert _loop is not None, "acquire() first"
    return asyncio.run_coroutine_threadsafe(coro, _loop)


def call(coro: Coroutine[Any, Any, Any], timeout_s: float) -> Any:
    """Run `coro` on the shared loop and wait for its result, at most `timeout_s`."""
    return submit(coro).result(timeout_s)
