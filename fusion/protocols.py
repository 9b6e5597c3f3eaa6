"""Missing-modality protocols (DESIGN §7): seeded availability masks applied on top of δ.

``full`` uses all available data unchanged. The drop-one, random-drop and structured
protocols are added here; masks are seeded so every method sees the same missing samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fusion.data import FusionData

PROTOCOLS = ("full",)


def apply_protocol(data: FusionData, protocol: str, seed: int) -> FusionData:
    if protocol == "full":
        return data
    raise NotImplementedError(f"protocol {protocol!r} is not implemented yet (have {PROTOCOLS})")
