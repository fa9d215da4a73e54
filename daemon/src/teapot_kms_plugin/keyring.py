"""The keyring: Barbican secrets in order (the first is primary) and their cache.

Key bytes are fetched at start and refreshed by a background thread before
they age out, so Encrypt, Decrypt and Status never wait on Barbican while the
cache is fresh.  A key not confirmed by Barbican for longer than ``max_stale``
seconds is dropped from memory and no longer used.
"""

import dataclasses
import logging
import re
import threading
import time
import typing
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import wrapping

LOG = logging.getLogger(__name__)

_HREF_UUID = re.compile(r"/secrets/([0-9a-fA-F-]{32,36})/?$")


class KeyUnavailable(Exception):
    """A key is configured but cannot be used now (not loaded, or stale)."""


class UnknownKey(Exception):
    """A key_id or key slot that is not in the keyring."""


class FetchError(Exception):
    """Fetching a key failed.  ``reason`` is a short label for metrics."""

    def __init__(self, message, reason="error"):
        super().__init__(message)
        self.reason = reason


class KeyLoadFailed(Exception):
    """A key could not be loaded.  The message is safe to log and to show in Status."""

    def __init__(self, message, fetch_failed):
        super().__init__(message)
        self.fetch_failed = fetch_failed


def load_aead(fetch, ref, metrics=None):
    """Fetch ``ref`` with ``fetch`` and return its AEAD; record the fetch in ``metrics``.

    Every failure becomes KeyLoadFailed: a FetchError keeps its message, a bad
    secret says why it is unusable, and an unexpected error is named by its
    type only, since its text is not known to be free of secrets.
    """
    started = time.monotonic()
    reason = None
    try:
        return wrapping.new_aead(fetch(ref))
    except FetchError as exc:
        reason = exc.reason
        raise KeyLoadFailed(str(exc), fetch_failed=True) from None
    except ValueError as exc:
        reason = "bad_key"
        raise KeyLoadFailed(f"secret {ref.ref} is unusable: {exc}", fetch_failed=False) from None
    except Exception as exc:  # pylint: disable=broad-exception-caught
        reason = "error"
        raise KeyLoadFailed(f"fetching secret {ref.ref} failed: unexpected {type(exc).__name__}", fetch_failed=False) from None
    finally:
        if metrics is not None:
            metrics.observe_fetch(time.monotonic() - started, reason)


@dataclasses.dataclass(frozen=True)
class KeyRef:
    """One Barbican secret in the keyring, as configured (a UUID or a full href).

    The key_id, the key slot and the associated data are derived once here:
    the RPC path only looks them up.
    """

    uuid: uuid.UUID
    ref: str
    key_id: str = dataclasses.field(init=False, compare=False)
    slot: bytes = dataclasses.field(init=False, compare=False, repr=False)
    header: bytes = dataclasses.field(init=False, compare=False, repr=False)
    aad: bytes = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "key_id", wrapping.key_id_for(self.uuid))
        object.__setattr__(self, "slot", self.uuid.bytes)
        object.__setattr__(self, "header", wrapping.header_for(self.uuid))
        object.__setattr__(self, "aad", wrapping.aad_for(self.uuid))

    @classmethod
    def parse(cls, text):
        """Accept a secret UUID or its href (``https://…/v1/secrets/<uuid>``)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("expected a Barbican secret UUID or href")
        text = text.strip()
        candidate = text
        if "/" in text:
            match = _HREF_UUID.search(text)
            if not match or not text.startswith(("http://", "https://")):
                raise ValueError(f"{text!r} is not a Barbican secret href (https://HOST/v1/secrets/UUID)")
            candidate = match.group(1)
        try:
            parsed = uuid.UUID(candidate)
        except ValueError:
            raise ValueError(f"{text!r} is not a Barbican secret UUID or href") from None
        return cls(parsed, text)


class LoadedKey(typing.NamedTuple):
    """A keyring member and the AES-256-GCM context of its material."""

    ref: KeyRef
    aead: AESGCM


class KeyringStatus(typing.NamedTuple):
    """What Status reports, from the keyring's state alone."""

    healthy: bool
    healthz: str
    key_id: str


Fetch = typing.Callable[[KeyRef], bytes]


class Keyring(typing.Protocol):
    """What the key service, the metrics and the daemon need of a keyring.

    Reading (``primary``, ``key``, ``status``, ``ages``) is the RPC path: no
    I/O there unless the implementation is meant to be slow.
    """

    @property
    def refs(self) -> "tuple[KeyRef, ...]":
        """The configured keys, primary first."""

    @property
    def primary_ref(self) -> KeyRef:
        """The key Encrypt uses."""

    @property
    def fetcher(self) -> Fetch:
        """The callable that reads a key's bytes from Barbican."""

    def primary(self) -> LoadedKey:
        """The primary key, or raise KeyUnavailable."""

    def key(self, key_slot: bytes) -> LoadedKey:
        """The member whose UUID bytes are ``key_slot``; raise UnknownKey or KeyUnavailable."""

    def status(self) -> KeyringStatus:
        """Health and the primary key_id, with no remote call."""

    def ages(self) -> "dict[str, float]":
        """``{key_id: seconds since Barbican last confirmed it}`` for the keys held in memory."""

    def refresh(self) -> "dict[str, str]":
        """Fetch every key now; ``{key_id: error}`` for those that failed."""

    def replace(self, refs: "typing.Sequence[KeyRef]") -> "dict[str, str]":
        """Switch to a new list of keys; ``{key_id: error}`` for those that failed, KeyUnavailable when the primary did."""

    def swap_fetcher(self, fetch: Fetch) -> None:
        """Fetch with ``fetch`` from now on (new credentials)."""

    def set_timings(self, refresh_interval: float, max_stale: float, retry_interval: float) -> None:
        """Apply new cache timings (a reload)."""

    def start(self) -> None:
        """Start background work, if any."""

    def stop(self) -> None:
        """Stop background work, if any."""


class _CacheEntry:
    """One key in the cache: its material, when Barbican last confirmed it, and the last error."""

    __slots__ = ("ref", "aead", "fetched_at", "error")

    def __init__(self, ref):
        self.ref = ref
        self.aead = None
        self.fetched_at = None
        self.error = "not fetched yet"


class KeyCache(Keyring):
    """Cached keys with bounded staleness, refreshed in the background."""

    def __init__(self, refs, fetch, refresh_interval, max_stale, retry_interval=None, metrics=None, clock=time.monotonic):
        if not refs:
            raise ValueError("the keyring needs at least one key")
        self._fetch = fetch
        self.refresh_interval = refresh_interval
        self.max_stale = max_stale
        self.retry_interval = retry_interval or min(10.0, refresh_interval)
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        # (refs, {key slot: _CacheEntry}) swapped as one object, so readers need no lock.
        self._ring = (tuple(refs), {ref.slot: _CacheEntry(ref) for ref in refs})
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = None

    # -- reading (the RPC path: no I/O, no waiting) --------------------------

    @property
    def primary_ref(self):
        return self._ring[0][0]

    @property
    def refs(self):
        return self._ring[0]

    def primary(self):
        refs, entries = self._ring
        entry = entries[refs[0].slot]
        return LoadedKey(entry.ref, self._usable(entry))

    def key(self, key_slot):
        entry = self._ring[1].get(key_slot)
        if entry is None:
            raise UnknownKey(f"key_id {wrapping.key_id_for_slot(key_slot)} is not in the keyring ({self._known()})")
        return LoadedKey(entry.ref, self._usable(entry))

    def _known(self):
        return "known: " + ", ".join(ref.key_id for ref in self._ring[0])

    def _usable(self, entry):
        aead, fetched_at = entry.aead, entry.fetched_at
        if aead is None:
            raise KeyUnavailable(f"key {entry.ref.key_id} is not loaded: {entry.error}")
        age = self._clock() - fetched_at
        if age > self.max_stale:
            message = (f"key {entry.ref.key_id} is stale: Barbican last confirmed it {age:.0f}s ago, "
                       f"more than max_stale {self.max_stale:.0f}s; last error: {entry.error}")
            entry.error = f"dropped after max_stale {self.max_stale:.0f}s; last error: {entry.error}"
            entry.aead = None
            raise KeyUnavailable(message)
        return aead

    def status(self):
        refs, entries = self._ring
        ref = refs[0]
        try:
            self._usable(entries[ref.slot])
        except KeyUnavailable as exc:
            return KeyringStatus(False, str(exc), ref.key_id)
        return KeyringStatus(True, "ok", ref.key_id)

    def ages(self):
        now = self._clock()
        return {entry.ref.key_id: now - entry.fetched_at for entry in self._ring[1].values() if entry.fetched_at is not None}

    # -- fetching ------------------------------------------------------------

    def _fetch_into(self, entry):
        try:
            aead = load_aead(self._fetch, entry.ref, self._metrics)
        except KeyLoadFailed as exc:
            dropped = exc.fetch_failed and entry.aead is None and entry.fetched_at is not None
            entry.error = (f"dropped after max_stale {self.max_stale:.0f}s; " if dropped else "") + str(exc)
            return str(exc)
        # fetched_at before aead: a reader that sees the key always sees its age.
        entry.fetched_at = self._clock()
        entry.aead = aead
        entry.error = "none"
        return None

    def refresh(self):
        errors = {}
        for entry in list(self._ring[1].values()):
            error = self._fetch_into(entry)
            if error:
                errors[entry.ref.key_id] = error
        return errors

    def replace(self, refs):
        """Switch to a new keyring (SIGHUP), fetching every key with the current fetcher.

        A key that cannot be fetched now keeps its cached material (still bound
        by max_stale).  The old keyring stays if the new primary has none.
        """
        if not refs:
            raise ValueError("the keyring needs at least one key")
        current = self._ring[1]
        entries = {}
        errors = {}
        for ref in refs:
            entry = _CacheEntry(ref)
            error = self._fetch_into(entry)
            if error:
                errors[ref.key_id] = error
                old = current.get(ref.slot)
                if old is not None and old.aead is not None:
                    entry.fetched_at, entry.aead = old.fetched_at, old.aead
            entries[ref.slot] = entry
        primary = entries[refs[0].slot]
        if primary.aead is None:
            raise KeyUnavailable(f"new primary key {refs[0].key_id} could not be loaded: {primary.error}")
        with self._lock:
            self._ring = (tuple(refs), entries)
        if errors:
            self._wake.set()
        return errors

    @property
    def fetcher(self):
        return self._fetch

    def swap_fetcher(self, fetch):
        self._fetch = fetch

    def set_timings(self, refresh_interval, max_stale, retry_interval):
        self.refresh_interval = refresh_interval
        self.max_stale = max_stale
        self.retry_interval = retry_interval

    # -- background refresh --------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._run, name="key-refresh", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self):
        delay = self._next_delay(self._failing(), 0)
        failures = 0
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                errors = self.refresh()
            except Exception as exc:  # pylint: disable=broad-exception-caught
                # The thread must outlive any surprise, or the keys would silently age out.
                errors = {"*": f"unexpected {type(exc).__name__}"}
            for key_id, error in errors.items():
                LOG.warning("refreshing key failed; cached material keeps serving up to max_stale",
                            extra={"key_id": key_id, "error": error})
            failures = failures + 1 if errors else 0
            delay = self._next_delay(bool(errors), failures)

    def _failing(self):
        return any(entry.aead is None for entry in self._ring[1].values())

    def _next_delay(self, failing, failures):
        if not failing:
            return self.refresh_interval
        return min(self.retry_interval * (2 ** min(failures, 6)), self.refresh_interval)
