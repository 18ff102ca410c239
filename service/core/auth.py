"""Optional API keys, the same for every transport: `Authorization: Bearer <key>` (the scheme in any
case) is read first, else `X-API-Key: <key>`; keys are compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr

from service.core.errors import Forbidden, Unauthorized


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request presents: the credentials of a Bearer `authorization` (as FastAPI's
    HTTPBearer reads them), else `api_key`; None when neither holds one."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials
    return api_key or None


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

    def check(self, presented: str | None, *, what: str = "an API key", how: str) -> None:
        """Unauthorized (401) without a key, saying `how` to send one; Forbidden (403) for a key
        that is not one of these."""
        if not presented:
            raise Unauthorized(f"{what} is required: {how}")
        if not self.accepts(presented):
            raise Forbidden(f"invalid {what.removeprefix('an ').removeprefix('the ')}")
