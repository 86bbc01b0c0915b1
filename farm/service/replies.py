"""Redis replies as text: the farm's clients return bytes; redis-py's types say bytes or str."""

from __future__ import annotations


def text(reply: object) -> str:
    """A string reply (bytes from the farm's clients) as text.

    Raises:
        TypeError: the reply is not a string (a missing key's None, a list).
    """
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, str):
        return reply
    raise TypeError(f"expected a Redis string reply, got {type(reply).__name__}")
