"""The keyring: Barbican secrets (or data fields of one Kubernetes Secret) in order, the first is primary, and their cache.

Key bytes are fetched at start and refreshed by a background thread before
they age out, so Encrypt, Decrypt and Status never wait on Barbican (or the
API server) while the cache is fresh.  A key not confirmed by its source for
longer than ``max_stale`` seconds is dropped from memory and no longer used.
"""

import dataclasses
import logging
import re
import threading
import time
import typing
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import pins
from . import wrapping

LOG = logging.getLogger(__name__)

_HREF_UUID = re.compile(r"/secrets/([0-9a-fA-F-]{32,36})/?$")


class KeyUnavailable(Exception):
    """A key is configured but cannot be used now (not loaded, or stale)."""


class UnknownKey(Exception):
    """A key_id or key slot that is not in the keyring; ``known`` lists the keyring's key_ids."""

    def __init__(self, message, known=""):
        super().__init__(message)
        self.known = known


class FetchError(Exception):
    """Fetching a key failed.  ``reason`` is a short label for metrics."""

    def __init__(self, message, reason="error"):
        super().__init__(message)
        self.reason = reason


class KeyLoadFailed(Exception):
    """A key could not be loaded.  The message is safe to log and to show in Status."""

    def __init__(self, message, fetch_failed, pin_mismatch=False):
        super().__init__(message)
        self.fetch_failed = fetch_failed
        self.pin_mismatch = pin_mismatch


def load_aead(fetch, ref, metrics=None, key_pins=None):
    """Fetch ``ref`` with ``fetch`` and return its AEAD; record the fetch in ``metrics``.

    Every failure becomes KeyLoadFailed: a FetchError keeps its message, a bad
    secret says why it is unusable, material other than the one pinned in
    ``key_pins`` is refused, and an unexpected error is named by its type only,
    since its text is not known to be free of secrets.
    """
    started = time.monotonic()
    reason = None
    try:
        material = fetch(ref)
        aead = wrapping.new_aead(material)
        if key_pins is not None:
            key_pins.verify(ref.key_id, material)
        return aead
    except FetchError as exc:
        reason = exc.reason
        raise KeyLoadFailed(str(exc), fetch_failed=True) from None
    except pins.PinMismatch as exc:
        reason = "pin_mismatch"
        raise KeyLoadFailed(str(exc), fetch_failed=False, pin_mismatch=True) from None
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
        key_id = self._key_id()
        object.__setattr__(self, "key_id", key_id)
        object.__setattr__(self, "slot", self.uuid.bytes)
        object.__setattr__(self, "header", wrapping.header_for(self.uuid))
        object.__setattr__(self, "aad", wrapping.aad_for(self.uuid, key_id))

    def _key_id(self):
        return wrapping.key_id_for(self.uuid)

    @property
    def source(self):
        """Where the key's material is read: ``barbican`` or ``kubernetes_secret``."""
        return wrapping.source_of(self.key_id)

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


@dataclasses.dataclass(frozen=True)
class SecretFieldRef(KeyRef):
    """One data field of a Kubernetes Secret in the keyring.

    Its key_id is ``k8s-secret:<namespace>/<name>/<field>`` and its slot the
    name-based UUID of that key_id: the Secret's namespace, name and field are
    the key's identity, as a Barbican secret's UUID is.  ``ref`` reads
    ``<namespace>/<name>/<field>`` in messages.
    """

    namespace: str = ""
    name: str = ""
    field: str = ""

    @classmethod
    def of(cls, namespace, name, field):
        key_id = wrapping.secret_field_key_id(namespace, name, field)
        return cls(wrapping.slot_uuid_for(key_id), f"{namespace}/{name}/{field}", namespace=namespace, name=name, field=field)

    def _key_id(self):
        return wrapping.secret_field_key_id(self.namespace, self.name, self.field)


class LoadedKey(typing.NamedTuple):
    """A keyring member and the AES-256-GCM context of its material."""

    ref: KeyRef
    aead: AESGCM


class KeyringStatus(typing.NamedTuple):
    """What Status reports, from the keyring's state alone."""

    healthy: bool
    healthz: str
    key_id: str


class KeyState(typing.NamedTuple):
    """One configured key as the operator sees it (``teapot-kms-plugin status``, metrics)."""

    key_id: str
    role: str
    loaded: bool
    age_seconds: typing.Optional[float]
    last_error: str
    # The source's last answer was other material than the pinned one.
    pin_mismatch: bool = False
    # Where the material is read: barbican or kubernetes_secret.
    source: str = "barbican"


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

    def states(self) -> "list[KeyState]":
        """Every configured key, primary first: loaded and usable now, age of its material, last error."""

    def refresh(self) -> "dict[str, str]":
        """Fetch every key now; ``{key_id: error}`` for those that failed."""

    def replace(self, refs: "typing.Sequence[KeyRef]", fetch: Fetch) -> None:
        """Switch to a new list of keys fetched with ``fetch`` (new credentials); KeyUnavailable, and nothing
        changes, unless every key could be fetched."""

    def set_timings(self, refresh_interval: float, max_stale: float, retry_interval: float) -> None:
        """Apply new cache timings (a reload)."""

    def start(self) -> None:
        """Start background work, if any."""

    def stop(self, timeout: float = 2.0) -> None:
        """Stop background work, if any, waiting for it at most ``timeout`` seconds."""


class _CacheEntry:
    """One key in the cache: its material, when Barbican last confirmed it, and the last error."""

    __slots__ = ("ref", "material", "error", "pin_mismatch")

    def __init__(self, ref):
        self.ref = ref
        self.pin_mismatch = False
        # (AEAD or None, monotonic time Barbican last confirmed it or None), replaced as one tuple.
        self.material = (None, None)
        self.error = "not fetched yet"


class KeyCache(Keyring):
    """Cached keys with bounded staleness, refreshed in the background."""

    def __init__(self, refs, fetch, refresh_interval, max_stale, retry_interval=None, metrics=None, clock=time.monotonic,
                 key_pins=None):
        if not refs:
            raise ValueError("the keyring needs at least one key")
        self._fetch = fetch
        self._pins = key_pins
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
            raise UnknownKey(f"key_id {wrapping.describe_slot(key_slot)} is not in the keyring ({self._known()})", self._known())
        return LoadedKey(entry.ref, self._usable(entry))

    def _known(self):
        return "known: " + ", ".join(ref.key_id for ref in self._ring[0])

    def _usable(self, entry):
        # One read of the pair: the refresh thread replaces it as a whole.
        aead, fetched_at = entry.material
        if aead is None:
            raise KeyUnavailable(f"key {entry.ref.key_id} is not loaded: {entry.error}")
        age = self._clock() - fetched_at
        if age > self.max_stale:
            source = "Barbican" if entry.ref.source == "barbican" else "the Kubernetes Secret"
            message = (f"key {entry.ref.key_id} is stale: {source} last confirmed it {age:.0f}s ago, "
                       f"more than max_stale {self.max_stale:.0f}s; last error: {entry.error}")
            with self._lock:
                # Drop only the material judged stale: a refresh may have just replaced it.
                if entry.material[0] is aead:
                    entry.error = f"dropped after max_stale {self.max_stale:.0f}s; last error: {entry.error}"
                    entry.material = (None, fetched_at)
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
        return {entry.ref.key_id: now - entry.material[1] for entry in self._ring[1].values()
                if entry.material[1] is not None}

    def states(self):
        refs, entries = self._ring
        now = self._clock()
        states = []
        for index, ref in enumerate(refs):
            entry = entries[ref.slot]
            fetched_at = entry.material[1]
            try:
                self._usable(entry)
                loaded = True
            except KeyUnavailable:
                loaded = False
            states.append(KeyState(ref.key_id, "primary" if index == 0 else "decrypt-only", loaded,
                                   None if fetched_at is None else now - fetched_at, entry.error, entry.pin_mismatch,
                                   ref.source))
        return states

    # -- fetching ------------------------------------------------------------

    def _fetch_into(self, entry, fetch=None):
        try:
            aead = load_aead(fetch or self._fetch, entry.ref, self._metrics, self._pins)
        except KeyLoadFailed as exc:
            if exc.pin_mismatch:
                # Loud, every time: someone changed a key that data depends on. Only check values are logged.
                LOG.error("key material changed under a known key_id: refused", extra={
                    "key_id": entry.ref.key_id, "error": str(exc)})
            with self._lock:
                dropped = exc.fetch_failed and entry.material[0] is None and entry.material[1] is not None
                entry.error = (f"dropped after max_stale {self.max_stale:.0f}s; " if dropped else "") + str(exc)
                entry.pin_mismatch = exc.pin_mismatch
            return str(exc)
        with self._lock:
            entry.material = (aead, self._clock())
            entry.error = "none"
            entry.pin_mismatch = False
        return None

    def refresh(self):
        errors = {}
        for entry in list(self._ring[1].values()):
            error = self._fetch_into(entry)
            if error:
                errors[entry.ref.key_id] = error
        return errors

    def replace(self, refs, fetch):
        """Switch to a new keyring and fetcher (SIGHUP), fetching every key with the new fetcher.

        All or nothing: unless every key can be fetched now, the running keyring
        and fetcher stay.  Accepting a partial keyring would keep serving keys
        that the new credentials may not read, until they go stale hours later.
        """
        if not refs:
            raise ValueError("the keyring needs at least one key")
        entries = {}
        errors = {}
        for ref in refs:
            entry = _CacheEntry(ref)
            error = self._fetch_into(entry, fetch)
            if error:
                errors[ref.key_id] = error
            entries[ref.slot] = entry
        if errors:
            raise KeyUnavailable("not every key could be fetched: "
                                 + "; ".join(f"{key_id}: {error}" for key_id, error in errors.items()))
        with self._lock:
            self._fetch = fetch
            self._ring = (tuple(refs), entries)

    @property
    def fetcher(self):
        return self._fetch

    def set_timings(self, refresh_interval, max_stale, retry_interval):
        self.refresh_interval = refresh_interval
        self.max_stale = max_stale
        self.retry_interval = retry_interval

    # -- background refresh --------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._run, name="key-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout=2.0):
        """Stop the refresh thread, waiting at most ``timeout`` seconds for it.

        A fetch may hang up to ``barbican.timeout``: the thread is a daemon
        thread, so leaving it behind costs nothing, while waiting could outlast
        the unit's TimeoutStopSec and end in SIGKILL.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self):
        # Keys never loaded (the daemon's start) are fetched at once.
        delay = 0 if self._failing() else self.refresh_interval
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
            never_loaded = {entry.ref.key_id for entry in self._ring[1].values() if entry.material[1] is None}
            for key_id, error in errors.items():
                if key_id in never_loaded:
                    LOG.error("cannot load key; it is not served until a fetch succeeds, retried every %gs at first",
                              self.retry_interval, extra={"key_id": key_id, "error": error})
                else:
                    LOG.warning("refreshing key failed; cached material keeps serving up to max_stale",
                                extra={"key_id": key_id, "error": error})
            failures = failures + 1 if errors else 0
            # The first retry after retry_interval, then doubling.
            delay = self._next_delay(bool(errors), max(failures - 1, 0))

    def _failing(self):
        return any(entry.material[0] is None for entry in self._ring[1].values())

    def _next_delay(self, failing, failures):
        if not failing:
            return self.refresh_interval
        return min(self.retry_interval * (2 ** min(failures, 6)), self.refresh_interval)
