"""Best-effort duplicate detection at the gateway: recently accepted event ids.

The authoritative de-duplication is downstream (the meter and the ledger, by
``(vendor_id, event_id)`` forever). Here a bounded LRU of recently ACCEPTED events lets
the gateway answer DUPLICATE for the common case, a client retrying a batch whose answer
it lost, without writing the repeats to Kafka. Only exact repeats count: the key is the
identity and the value a digest of the signed payload, so a re-send with a different
payload goes through and the meter raises DUPLICATE_CONFLICT as the rules require.
Events enter the cache only after Kafka acknowledged them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict


def payload_digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).digest()


class RecentEvents:
    """``(vendor_id, event_id) -> payload digest`` for the last ``capacity`` accepted events."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def is_duplicate(self, vendor_id: str, event_id: str, digest: bytes) -> bool:
        """True when this exact event (same identity and payload) was accepted recently."""
        if self.capacity <= 0:
            return False
        with self._lock:
            return self._entries.get((vendor_id, event_id)) == digest

    def remember(self, vendor_id: str, event_id: str, digest: bytes) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            key = (vendor_id, event_id)
            self._entries[key] = digest
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
