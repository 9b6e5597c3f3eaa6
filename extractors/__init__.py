"""Expert registry, embedding cache and extraction (docs/design.md §3.2, §5)."""

from extractors.base import Expert, SampleError
from extractors.cache import CacheData, CacheMeta, CacheRecords, read_cache, write_cache
from extractors.registry import create_expert, list_experts, register_expert, register_preset

__all__ = [
    "CacheData",
    "CacheMeta",
    "CacheRecords",
    "Expert",
    "SampleError",
    "create_expert",
    "list_experts",
    "read_cache",
    "register_expert",
    "register_preset",
    "write_cache",
]
