"""The ``passthrough`` bridge (text modalities): the note itself, whitespace-normalised."""

from __future__ import annotations

from typing import Any

from extractors.base import SampleError
from extractors.rag.bridge.base import Bridge, BridgeInputs, BridgeRows, is_missing
from extractors.rag.bridge.registry import register_bridge
from extractors.readers.notes import read_note


def passthrough(value: Any) -> str:
    """The note whitespace-normalised; refused as the text experts refuse it (nothing visible)."""
    if is_missing(value):
        raise SampleError("empty text")
    return " ".join(read_note(value).split())


@register_bridge("passthrough")
class PassthroughBridge(Bridge):
    input_kind = "text"

    def fill(self, inputs: BridgeInputs, rows: BridgeRows) -> dict[str, Any]:
        rows.fill_each(inputs, passthrough, self.name)
        return {}
