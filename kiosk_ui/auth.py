"""Accounts, passwords and sessions: the rules as plain functions, the storage in :mod:`kiosk_ui.services`.

Passwords are Argon2id hashes (argon2-cffi's defaults, RFC 9106 low-memory
profile). A session is a random token in an HttpOnly, SameSite=Strict
cookie; the database keeps only its SHA-256, so a copied database cannot be
used to sign in. Each session carries its own anti-forgery (CSRF) token that
every form must send back.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ROLES = ("doctor", "technician", "radiologist", "admin")

# What each role may do; checked on every route.
PERMISSIONS: dict[str, frozenset[str]] = {
    "doctor": frozenset({"worklist", "study", "feedback", "referral", "report", "upload", "schedule"}),
    "radiologist": frozenset({"worklist", "study", "feedback", "referral", "report"}),
    "technician": frozenset({"worklist", "upload", "schedule"}),
    "admin": frozenset({"worklist", "study", "referral", "upload", "audit", "users", "schedule"}),
}

MIN_PASSWORD_LENGTH = 10


def may(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


class Passwords:
    """Argon2id hashing; the box uses argon2-cffi's defaults (RFC 9106 low-memory), tests pass cheaper parameters."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        # Verified against when the user name is unknown, so a wrong name costs as long as a wrong password.
        self._dummy = self.hasher.hash(secrets.token_hex(16))

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True for the right password; with no stored hash (unknown name) still runs a full Argon2 check, then False."""
        try:
            return self.hasher.verify(stored_hash or self._dummy, password) and stored_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def password_problem(password: str) -> str | None:
    """Why a new password is refused (English, for the CLI), or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"The password needs at least {MIN_PASSWORD_LENGTH} characters."
    return None


@dataclass(frozen=True)
class LockoutPolicy:
    max_failures: int
    lock_s: float


def is_locked(locked_until: float | None, now: float) -> bool:
    return locked_until is not None and locked_until > now


def lock_after(failed_count: int, now: float, policy: LockoutPolicy) -> float | None:
    """When a lock that ``failed_count`` consecutive wrong passwords earn ends, or None when they earn none yet."""
    if failed_count >= policy.max_failures:
        return now + policy.lock_s
    return None


def is_expired(last_seen: float, now: float, idle_timeout_s: float) -> bool:
    return now - last_seen > idle_timeout_s


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_token(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))
