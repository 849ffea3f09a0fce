"""Connect codecs that answer a malformed message with ``invalid_argument``.

connectrpc's own codecs let a decode error escape as an unknown exception (a 500 with code
``unknown``); a client that sent bad bytes should be told so instead.
"""

from __future__ import annotations

from typing import Any

from connectrpc.code import Code
from connectrpc.codec import Codec, proto_binary_codec, proto_json_codec
from connectrpc.errors import ConnectError


class StrictDecode:
    def __init__(self, inner: Codec[Any, Any]) -> None:
        self._inner = inner

    def name(self) -> str:
        return self._inner.name()

    def encode(self, message: Any) -> bytes:
        return self._inner.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        try:
            return self._inner.decode(data, message_class)
        except Exception as exc:  # any decode failure is the sender's
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"malformed {self.name()} message for {message_class.__name__}: {exc}",
            ) from exc


def strict_codecs() -> list[Codec[Any, Any]]:
    return [StrictDecode(proto_binary_codec()), StrictDecode(proto_json_codec())]
