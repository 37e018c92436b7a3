# Stubs of ext/messages.pyx; documented there.
from collections import deque
from collections.abc import Sequence
from typing import Any

class Message:
    topic: bytes
    message: bytes | memoryview
    extra: tuple[bytes | memoryview, ...]
    size: int
    def __init__(self, topic: bytes, frames: Sequence[Any]) -> None: ...
    @property
    def frames(self) -> list[bytes | memoryview]: ...

def split_by_topic(messages: list[Message], lanes: int) -> tuple[list[list[Message]], int]: ...
def take_batch(unsent: deque[Message], max_items: int, max_parts: int, budget: int
               ) -> tuple[list[Message], int]: ...
def settle(sent: deque[Message], count: int) -> int: ...
