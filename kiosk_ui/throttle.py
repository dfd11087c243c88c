"""How many failed sign-ins a client address or an account name may make: token buckets as plain functions.

A bucket holds up to ``burst`` tokens and earns one back every ``refill_s``
seconds. Each sign-in attempt takes a token before the password is checked
and gives it back when the password was right, so only failures spend the
budget while two attempts racing in parallel can never both take the last
token. An empty bucket means the kiosk answers 429 with Retry-After and
neither checks the password nor writes an audit row per attempt; that is
what keeps a flood of made-up names from burying the real audit entries.

The state of each bucket lives in the box database (``kiosk_signin_buckets``,
see :mod:`kiosk_ui.signin`), so the limit holds for every process that
serves the kiosk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RatePolicy:
    burst: int  # failures allowed in a row
    refill_s: float  # seconds to earn one failure back


@dataclass(frozen=True)
class Bucket:
    tokens: float
    at: float  # when ``tokens`` was last computed


def level(bucket: Bucket | None, now: float, policy: RatePolicy) -> float:
    """Tokens in the bucket at ``now``; a missing bucket is full."""
    if bucket is None:
        return float(policy.burst)
    earned = max(0.0, now - bucket.at) / policy.refill_s
    return min(float(policy.burst), bucket.tokens + earned)


def take(bucket: Bucket | None, now: float, policy: RatePolicy) -> tuple[Bucket | None, float]:
    """One attempt: ``(bucket after taking a token, 0)``, or ``(None, seconds until a token is back)`` when empty."""
    tokens = level(bucket, now, policy)
    if tokens >= 1.0:
        return Bucket(tokens - 1.0, now), 0.0
    return None, (1.0 - tokens) * policy.refill_s


def give_back(bucket: Bucket | None, now: float, policy: RatePolicy) -> Bucket:
    """The token of an attempt that succeeded, returned."""
    return Bucket(min(float(policy.burst), level(bucket, now, policy) + 1.0), now)


def is_full(bucket: Bucket, now: float, policy: RatePolicy) -> bool:
    """A full bucket says nothing a missing row would not: it can be deleted."""
    return level(bucket, now, policy) >= policy.burst


def retry_after_header(seconds: float) -> str:
    """Retry-After in whole seconds, never 0 (a client told 0 would try again at once)."""
    return str(max(1, math.ceil(seconds)))
