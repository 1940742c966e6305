"""Brute-force protection for sign-in: failed logins counted in the cache (shared by API replicas
with Redis) in fixed windows, per (username, address), per username and per address.

A window ends on its own, so an attacker can at most delay the real user (never lock them out for
good), and the per-(username, address) limit is the tightest: the real user at another address
still gets in until the per-username limit, which is several times higher, is reached too. A
successful login clears its (username, address) counter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..cache import Cache
from .errors import TooManyAttempts

__all__ = ["LoginThrottle"]


def _key(kind: str, value: str) -> str:
    return f"edu:login:{kind}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"


@dataclass
class LoginThrottle:
    """Args: cache; limits per window; window length in seconds."""

    cache: Cache
    per_user_address: int = 5
    per_user: int = 20
    per_address: int = 50
    window_s: int = 900

    def _keys(self, username: str, address: str) -> list[tuple[str, int]]:
        return [
            (_key("ua", f"{username.lower()}\x00{address}"), self.per_user_address),
            (_key("u", username.lower()), self.per_user),
            (_key("a", address), self.per_address),
        ]

    def check(self, username: str, address: str) -> None:
        """Raise TooManyAttempts when any counter is at its limit."""
        for key, limit in self._keys(username, address):
            value = self.cache.get(key)
            if value is not None and int(value) >= limit:
                raise TooManyAttempts(
                    f"too many failed logins; try again in up to {self.window_s // 60} minutes",
                    retry_after_s=self.window_s,
                )

    def failed(self, username: str, address: str) -> None:
        for key, _ in self._keys(username, address):
            self.cache.incr(key, ttl_s=self.window_s)

    def succeeded(self, username: str, address: str) -> None:
        self.cache.delete(self._keys(username, address)[0][0])
