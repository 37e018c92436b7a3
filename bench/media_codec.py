"""Cost of the envelope codec per message (decode_media, message_kind), with the whole-message
Savant check, on messages savant-rs makes. A quick timeit, not part of the load benchmark:

    .venv/bin/python -m bench.media_codec
"""

from __future__ import annotations

import timeit

import savant_rs

from mgfast.media import decode_media, encode_media, message_kind

sm = savant_rs.serialization_module
prim = savant_rs.primitives


def _messages() -> dict[str, bytes]:
    frame = sm.save_message_to_bytes(sm.Message.video_frame(savant_rs.utils.gen_frame()))
    eos = sm.save_message_to_bytes(sm.Message.end_of_stream(prim.EndOfStream("cam-1")))
    inline = prim.VideoFrame(source_id="cam-1", framerate="30/1", width=2, height=2,
                             content=prim.VideoFrameContent.internal(b"\x00" * 100_000))
    batch = prim.VideoFrameBatch()
    for i in range(4):
        batch.add(i, savant_rs.utils.gen_frame())
    return {
        "gen_frame": frame,
        "end_of_stream": eos,
        "frame with 100 KB inline content": sm.save_message_to_bytes(sm.Message.video_frame(inline)),
        "batch of 4 gen_frames": sm.save_message_to_bytes(sm.Message.video_frame_batch(batch)),
    }


def best_ns(fn, number: int = 100_000) -> float:
    """The best of 7 runs, in ns per call: the least disturbed by other load."""
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e9


def main() -> None:
    for name, raw in _messages().items():
        body = encode_media(b"cam-1", raw, [])
        with_data = encode_media(b"cam-1", raw, [b"\x00" * 100_000])
        print(f"{name:34s} {len(raw):7d} B  decode_media {best_ns(lambda: decode_media(body)):6.0f} ns"
              f"  (+100 KB data part {best_ns(lambda: decode_media(with_data)):6.0f} ns)"
              f"  message_kind {best_ns(lambda: message_kind(raw)):6.0f} ns")


if __name__ == "__main__":
    main()
