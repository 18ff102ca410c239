"""Optional API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr


class ApiKeys:
    """The configured keys, kept as SHA-256 digests.

    Comparing digests makes every comparison the same length, so neither a key's content nor its
    length leaks through timing; every key is compared, match or not.
    """

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        self._digests = [self._digest(k.get_secret_value()) for k in keys]

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode()).digest()

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str) -> bool:
        given = self._digest(presented)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(given, digest)
        return matched
