"""Our own cancellation, told apart from errors that arrive at the same moment.

On Python 3.11, ``asyncio.wait_for`` returns (or raises) the awaited operation's outcome when
that operation finishes just as the task is cancelled, so the cancellation is lost: a retry
loop around it would go on after its task was cancelled. Task.cancelling() still counts the
request, which is what these helpers read.
"""

from __future__ import annotations

import asyncio


def cancelling() -> bool:
    """Whether the current task has been asked to cancel (Python 3.11+; assume not before)."""
    task = asyncio.current_task()
    count = getattr(task, "cancelling", None)
    return bool(count and count())


def raise_if_cancelling() -> None:
    """Raise CancelledError if the current task was cancelled and the request was lost."""
    if cancelling():
        raise asyncio.CancelledError("cancelled while the awaited operation finished")
