"""Values a well-typed message may still carry but no receiver can act on: integers outside the
signed 64-bit range and text UTF-8 cannot carry. Checked per stream message by the server, which
answers ``bad_request`` on that stream instead of failing later in a handler."""

from __future__ import annotations

from tether.protocol.messages import Message

INT_MIN = -(1 << 63)  # every integer field is a signed 64-bit value (docs/PROTOCOL.md)
INT_MAX = (1 << 63) - 1


def problem(msg: Message) -> str | None:
    """Why a well-typed message still cannot be acted on, or None: an integer outside the
    signed 64-bit range (no file offset, size or time can hold it) or text UTF-8 cannot carry
    (JSON's lone surrogate). The receiver answers ``bad_request`` on that stream; the
    connection goes on."""
    values = msg.__dict__
    todo = [values[f.name] for f in msg.FIELDS if f.name != "stream"]
    while todo:
        item = todo.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                return f"{msg.TYPE}: an integer outside the signed 64-bit range"
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{msg.TYPE}: text that is not valid Unicode (a lone surrogate)"
        elif isinstance(item, list):
            if not _plain_list_ok(item):
                todo.extend(item)
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
    return None


def _plain_list_ok(items: list[object]) -> bool:
    """Whether a list of only integers, or only text, is fine, in a few C-level passes (a
    sync_list carries thousands); False also for every other list, which is walked item by
    item."""
    kinds = set(map(type, items))
    if kinds <= {int, bool}:
        numbers: list[int] = items  # type: ignore[assignment]
        return not numbers or (min(numbers) >= INT_MIN and max(numbers) <= INT_MAX)
    if kinds == {str}:
        try:
            "".join(items).encode("utf-8")  # type: ignore[arg-type]
        except UnicodeEncodeError:
            return False
        return True
    return False
