"""A small bounded least-recently-used mapping; nothing in the studio grows without limit."""

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """`on_evict(key)` runs after an evicted value is dropped, so `mx.clear_cache()` there can hand
    its memory back (called while the value is still referenced, it would find nothing to free)."""

    def __init__(self, capacity: int, on_evict: Callable[[Hashable], None] | None = None):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.on_evict = on_evict
        self._items: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Hashable, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self.pop_oldest()

    def pop_oldest(self) -> Hashable:
        """Evict the least recently used entry; returns its key."""
        old_key = next(iter(self._items))
        self.pop(old_key)
        return old_key

    def pop(self, key: Hashable) -> None:
        """Evict one entry."""
        del self._items[key]
        if self.on_evict is not None:
            self.on_evict(key)

    def get_or_create(self, key: Hashable, create: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = create()
            self.put(key, value)
        return value

    def clear(self) -> None:
        while self._items:
            self.pop_oldest()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list:
        return list(self._items)

    def values(self) -> list[V]:
        return list(self._items.values())

    def items(self) -> list[tuple[Hashable, V]]:
        return list(self._items.items())
