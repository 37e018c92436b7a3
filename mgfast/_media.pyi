# Stubs of the compiled envelope codec (ext/media.pyx); documented in mgfast/media.py.
from collections.abc import Sequence
from typing import Union

from mgfast.media import MediaError

Buffer = Union[bytes, bytearray, memoryview]
DecodedMedia = tuple[memoryview, memoryview, list[memoryview], int]

MAX_VARINT_LEN: int
MAX_DATA_PARTS: int
MAX_BATCH_ITEMS: int
MAX_BATCH_DATA_PARTS: int

def decode_media(body: Buffer) -> DecodedMedia: ...
def message_kind(message: Buffer) -> int: ...
def encode_media(topic: Buffer, message: Buffer, data: Sequence[Buffer]) -> bytes: ...
def encode_media_pieces(topic: Buffer, message: Buffer, data: Sequence[Buffer]
                        ) -> tuple[int, list[Buffer]]: ...
def encode_media_batch(items: Sequence[tuple[Buffer, Buffer, Sequence[Buffer]]]) -> bytes: ...
def decode_media_batch(body: Buffer) -> list[DecodedMedia | MediaError]: ...
