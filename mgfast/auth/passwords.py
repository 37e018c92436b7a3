"""Argon2 verification off the event loop, and what makes its results safe to cache.

- Argon2 is slow on purpose (milliseconds to seconds, by the hash's own m/t/p parameters).
  Verifying on the loop would stall every other connection of the worker, so it runs on a
  small thread pool (argon2-cffi releases the GIL while hashing). Concurrent checks of the
  same credentials share one verification.
- An unknown user costs a verification too (against another user's hash, whose parameters are
  real, or a dummy one), so the answer time does not tell which usernames exist.
- Results are cached by a keyed digest of (username, password) with a per-process random key:
  the plaintext password is never kept, and the digest is useless outside this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

THREADS = 2  # argon2 is CPU-bound: a couple of threads per worker, the loop keeps the rest
# Verifications waiting for a thread, at most. A flood of new credentials (from many addresses,
# past the quarantine) then gets 503 instead of queueing work and memory without bound; users
# whose result is cached are not affected.
MAX_QUEUED = 256

_HASHER = argon2.PasswordHasher()  # verify() reads type and parameters from each hash


def hash_password(password: str) -> str:
    """A new argon2id PHC string with argon2-cffi's default (RFC 9106 low-memory) parameters."""
    return _HASHER.hash(password)


def verify(password_hash: str, password: bytes) -> bool:
    """Whether ``password`` matches the argon2i/d/id PHC string (False for a bad hash too)."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class PasswordChecker:
    """Verifies on a thread pool; one verification per distinct pending check."""

    def __init__(self, threads: int = THREADS) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        self.key = os.urandom(32)
        self.pending: dict[tuple[bytes, str], asyncio.Future[bool]] = {}
        self.dummy_hash = _HASHER.hash(os.urandom(16))
        self.queued = 0  # verifications submitted and not finished

    def busy(self) -> bool:
        """Whether a new verification should be refused for now (MAX_QUEUED reached)."""
        return self.queued >= MAX_QUEUED

    def _submit(self, password_hash: str, password: bytes) -> asyncio.Future[bool]:
        future = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(
            self.pool, verify, password_hash, password))
        self.queued += 1
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: asyncio.Future[bool]) -> None:
        self.queued -= 1

    def digest(self, username: str, password: bytes) -> bytes:
        """The cache key for these credentials: a keyed BLAKE2b, never the password itself."""
        return hashlib.blake2b(username.encode() + b"\0" + password, key=self.key,
                               digest_size=16).digest()

    def check(self, digest: bytes, password_hash: str, password: bytes) -> asyncio.Future[bool]:
        """Whether the password matches, verified off the loop."""
        key = (digest, password_hash)
        future = self.pending.get(key)
        if future is None:
            future = self._submit(password_hash, password)
            self.pending[key] = future
            future.add_done_callback(lambda _f: self.pending.pop(key, None))
        return future

    def waste(self, password: bytes, like_hash: str | None) -> asyncio.Future[bool]:
        """A verification whose answer is ignored, for an unknown user: as slow as a real one."""
        return self._submit(like_hash or self.dummy_hash, password)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
