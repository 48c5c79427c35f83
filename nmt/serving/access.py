"""Who may translate, and how often: API keys (`--api-keys FILE`) and per-client rate limits
(`--rate-limit N` requests a minute). Needs nothing of FastAPI.

The key file holds one key per line (blank lines and lines starting with # are skipped); only
the keys' SHA-256 digests are kept, and a key given by a client is compared by digest in
constant time. A request without a key is refused with 401, one with a key not in the file with
403. The rate limit is a token bucket per key (per client address when no keys are required):
N requests a minute, up to N at once; over it the answer is 429 with the seconds to wait.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from nmt.errors import NmtError


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyRing:
    """The accepted API keys, as digests."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NmtError(f"--api-keys: file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise NmtError(f"--api-keys: cannot read {path} ({e})") from None
        keys = [line.strip() for line in text.splitlines()]
        keys = [k for k in keys if k and not k.startswith("#")]
        if not keys:
            raise NmtError(f"--api-keys: {path} holds no key (one key per line)")
        return cls(keys)

    def accepts(self, key: str) -> bool:
        given = _digest(key)
        # Compare with every digest, so the time taken does not say which one matched.
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(given, digest)
        return found


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class RateLimiter:
    """`per_minute` requests a minute for each identity, up to `per_minute` at once."""

    def __init__(self, per_minute: int) -> None:
        if per_minute < 1:
            raise NmtError(f"--rate-limit must be at least 1 request a minute, not {per_minute}")
        self.per_minute = per_minute
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, identity: str) -> int | None:
        """Spend one request of `identity`; None if allowed, else the seconds to wait."""
        now = time.monotonic()
        rate = self.per_minute / 60.0
        with self._lock:
            if len(self._buckets) > 10_000:  # many clients seen: forget the idle ones
                self._forget_full(now)
            bucket = self._buckets.setdefault(identity, _Bucket(float(self.per_minute), now))
            bucket.tokens = min(self.per_minute, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return max(1, math.ceil((1.0 - bucket.tokens) / rate))

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled since their last use: a full bucket is what a
        client never seen gets, so forgetting it changes nothing."""
        refill = 60.0  # seconds for an empty bucket to fill again (per_minute a minute)
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < refill}


@dataclass
class Access:
    """The server's access rules; `check` says what a request may do."""

    keys: KeyRing | None = None
    limiter: RateLimiter | None = None

    def check(self, key: str | None, client: str) -> tuple[int, str, int | None] | None:
        """None when the request may go on, else (status, message, retry-after seconds)."""
        identity = f"address {client}"
        if self.keys is not None:
            if not key:
                return 401, "an API key is required: send it as 'Authorization: Bearer KEY'", None
            if not self.keys.accepts(key):
                return 403, "this API key is not accepted", None
            identity = f"key {_digest(key).hex()}"
        if self.limiter is not None:
            wait = self.limiter.take(identity)
            if wait is not None:
                limit = self.limiter.per_minute
                return (
                    429,
                    f"over the rate limit of {limit} requests a minute; retry in {wait} s",
                    wait,
                )
        return None
