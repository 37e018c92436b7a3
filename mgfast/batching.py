"""What an mgfast client and server agree on beyond upstream's API: the media types, the
``x-mgfast-batch`` capability header of ``GET /health``, and the batch answer's body.

A batch answer is ``{"results": [status, ...]}``, one upstream status per item attempted. The
common one, every item accepted, is encoded once per item count; a client that sees exactly
those bytes settles the whole batch without parsing JSON (anything else it parses).
"""

from __future__ import annotations

from functools import lru_cache

import orjson

MEDIA_TYPE = b"application/protobuf"
# Upstream's protobuf extractor (actix-protobuf) takes both names of the media type.
MEDIA_TYPES = (MEDIA_TYPE, b"application/x-protobuf")
BATCH_TYPE = b"application/x-mgfast-batch"
BATCH_HEADER = b"x-mgfast-batch"  # "1" in a server's GET /health answer: it takes batches


def batch_answer(statuses: list[int]) -> bytes:
    return orjson.dumps({"results": statuses})


@lru_cache(maxsize=None)  # one per item count, at most MAX_BATCH_ITEMS
def all_accepted(count: int) -> bytes:
    """The answer to a batch of ``count`` items, all of them accepted."""
    return batch_answer([200] * count)
