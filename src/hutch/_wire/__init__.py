"""Wire formats shared by the agent, the server and the SDK.

Stdlib only: the agent imports this package inside sandboxes whose images have no Python.
"""

from hutch._wire.frames import (
    FRAME_HEADER,
    MAX_PAYLOAD,
    Channel,
    Frame,
    FrameDecoder,
    FrameError,
    Kind,
    encode_frame,
    encode_frame_parts,
    encode_json_frame,
)

__all__ = [
    "FRAME_HEADER",
    "MAX_PAYLOAD",
    "Channel",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "Kind",
    "encode_frame",
    "encode_frame_parts",
    "encode_json_frame",
]
