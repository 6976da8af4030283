"""kms/materials.py on a fake keyring and a fake clock: which data key a new object gets (shared
within max objects, age and bytes), unwrapped keys kept for decrypt_seconds (and at most
max_entries of them), and the cache-hit hook told of every use served without a keyring call."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from proxy.crypto.format import SCOPE_BUCKET, SCOPE_OBJECT, encryption_context
from proxy.kms.base import DataKey, KeyAccessDenied, KeyUnavailable
from proxy.kms.materials import Materials, ReuseLimits
from proxy.metrics import REGISTRY

KEY = "master"
LIMITS = ReuseLimits(max_objects=3, max_seconds=60, max_bytes=1000)


class FakeKeyring:
    """Counts its calls; data keys are numbered, so tests can tell which one they got."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.refuse: set[str] = set()
        self.closed = False
        self.readied: list[str] = []

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        self.calls.append(("generate", key_id, dict(context)))
        if key_id in self.refuse:
            raise KeyAccessDenied(f"no key {key_id}")
        n = len(self.calls)
        return DataKey(plaintext=bytes([n]) * 32, wrapped=b"wrapped-%d" % n, key_ref=f"ref:{key_id}:{n}")

    async def decrypt_data_key(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        self.calls.append(("decrypt", key_ref, dict(context)))
        if key_ref in self.refuse:
            raise KeyAccessDenied(f"no key {key_ref}")
        return wrapped.ljust(32, b"\0")

    async def wrap_data_key(self, key_id: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        self.calls.append(("wrap", key_id, dict(context)))
        return DataKey(plaintext=plaintext, wrapped=b"rewrapped", key_ref=f"ref:{key_id}:w")

    async def ready(self, key_id: str) -> None:
        self.readied.append(key_id)

    async def close(self) -> None:
        self.closed = True

    def count(self, operation: str) -> int:
        return sum(1 for op, _, _ in self.calls if op == operation)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Hit = tuple[str, str, dict[str, str], str | None]


def materials(
    keyring: FakeKeyring,
    clock: Clock,
    hits: list[Hit] | None = None,
    *,
    reuse: ReuseLimits | None = LIMITS,
    decrypt_seconds: float = 30.0,
    max_entries: int = 10_000,
) -> Materials:
    def on_cache_hit(operation: str, key_ref: str, context: Mapping[str, str], key_id: str | None) -> None:
        if hits is not None:
            hits.append((operation, key_ref, dict(context), key_id))

    return Materials(
        keyring,
        reuse=reuse,
        decrypt_seconds=decrypt_seconds,
        max_entries=max_entries,
        clock=clock,
        on_cache_hit=on_cache_hit,
    )


@pytest.fixture
def keyring() -> FakeKeyring:
    return FakeKeyring()


@pytest.fixture
def clock() -> Clock:
    return Clock()


# --- data keys for new objects ------------------------------------------------------------


async def test_without_reuse_every_object_gets_its_own_object_scoped_key(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock, reuse=None)
    first, scope = await m.new_object_key(KEY, "b", "k1", 10)
    second, _ = await m.new_object_key(KEY, "b", "k2", 10)
    assert scope == SCOPE_OBJECT and first != second
    assert [c[2] for c in keyring.calls] == [encryption_context("b", "k1"), encryption_context("b", "k2")]


@pytest.mark.parametrize("size", [None, LIMITS.max_bytes + 1], ids=["unknown-size", "over-max-bytes"])
async def test_unknown_or_large_sizes_never_share(keyring: FakeKeyring, clock: Clock, size: int | None) -> None:
    m = materials(keyring, clock)
    for name in ("k1", "k2"):
        _, scope = await m.new_object_key(KEY, "b", name, size)
        assert scope == SCOPE_OBJECT
    assert keyring.count("generate") == 2
    assert keyring.calls[0][2] == encryption_context("b", "k1")


async def test_a_shared_key_serves_max_objects_then_a_fresh_one_is_made(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock)
    keys = [await m.new_object_key(KEY, "b", f"k{i}", 10) for i in range(LIMITS.max_objects + 1)]
    assert {scope for _, scope in keys} == {SCOPE_BUCKET}
    assert len({k.key_ref for k, _ in keys[: LIMITS.max_objects]}) == 1
    assert keys[-1][0] != keys[0][0]
    # Wrapped for the bucket alone: the context names no object.
    assert [c[2] for c in keyring.calls] == [encryption_context("b", "", SCOPE_BUCKET)] * 2


async def test_a_shared_key_is_not_used_at_max_seconds(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock)
    first, _ = await m.new_object_key(KEY, "b", "k1", 10)
    clock.now += LIMITS.max_seconds - 0.001
    assert (await m.new_object_key(KEY, "b", "k2", 10))[0] == first
    clock.now += 0.001
    assert (await m.new_object_key(KEY, "b", "k3", 10))[0] != first
    assert keyring.count("generate") == 2


async def test_a_shared_key_seals_at_most_max_bytes(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock)
    first, _ = await m.new_object_key(KEY, "b", "k1", 600)
    assert (await m.new_object_key(KEY, "b", "k2", 400))[0] == first  # exactly max_bytes in all
    assert (await m.new_object_key(KEY, "b", "k3", 1))[0] != first
    assert keyring.count("generate") == 2


async def test_shared_keys_are_per_master_key_and_bucket(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock)
    a, _ = await m.new_object_key(KEY, "b1", "k", 1)
    b, _ = await m.new_object_key(KEY, "b2", "k", 1)
    c, _ = await m.new_object_key("other", "b1", "k", 1)
    assert len({a.key_ref, b.key_ref, c.key_ref}) == 3
    assert (await m.new_object_key(KEY, "b1", "k2", 1))[0] == a


async def test_a_failed_generate_is_not_cached(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock)
    keyring.refuse.add(KEY)
    for _ in range(2):
        with pytest.raises(KeyAccessDenied, match=f"no key {KEY}"):
            await m.new_object_key(KEY, "b", "k", 10)
    assert keyring.count("generate") == 2


# --- unwrapped keys -----------------------------------------------------------------------


async def test_unwrapped_keys_are_kept_until_decrypt_seconds(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock)
    ctx = encryption_context("b", "k")
    key = await m.unwrap("ref:1", b"w1", ctx)
    clock.now += 29.999
    assert await m.unwrap("ref:1", b"w1", ctx) == key
    assert keyring.count("decrypt") == 1
    clock.now += 0.001  # 30 s after the keyring call: gone
    assert await m.unwrap("ref:1", b"w1", ctx) == key
    assert keyring.count("decrypt") == 2


async def test_the_cache_key_is_reference_wrapped_key_and_context(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock)
    ctx = encryption_context("b", "k")
    await m.unwrap("ref:1", b"w1", ctx)
    await m.unwrap("ref:2", b"w1", ctx)
    await m.unwrap("ref:1", b"w2", ctx)
    await m.unwrap("ref:1", b"w1", encryption_context("b", "moved"))
    await m.unwrap("ref:1", b"w1", dict(reversed(list(ctx.items()))))  # same context, other order: a hit
    assert keyring.count("decrypt") == 4


async def test_without_decrypt_seconds_nothing_is_kept(keyring: FakeKeyring, clock: Clock) -> None:
    hits: list[Hit] = []
    m = materials(keyring, clock, hits, decrypt_seconds=0)
    for _ in range(3):
        await m.unwrap("ref:1", b"w1", encryption_context("b", "k"))
    assert keyring.count("decrypt") == 3 and hits == []


async def test_at_most_max_entries_are_kept_least_recently_used_first_out(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock, max_entries=2)
    ctx = encryption_context("b", "k")
    for ref in ("a", "b", "a", "c"):  # the second "a" is a hit and makes "b" the oldest
        await m.unwrap(ref, b"w", ctx)
    assert keyring.count("decrypt") == 3
    await m.unwrap("a", b"w", ctx)
    await m.unwrap("c", b"w", ctx)
    assert keyring.count("decrypt") == 3
    await m.unwrap("b", b"w", ctx)
    assert keyring.count("decrypt") == 4


async def test_a_failed_unwrap_is_not_cached_and_is_counted(keyring: FakeKeyring, clock: Clock) -> None:
    def denied() -> float:
        value = REGISTRY.get_sample_value(
            "sealgate_keyring_calls_total", {"operation": "decrypt", "outcome": "AccessDenied"}
        )
        return value or 0.0

    m = materials(keyring, clock)
    keyring.refuse.add("ref:bad")
    before = denied()
    for _ in range(2):
        with pytest.raises(KeyAccessDenied, match="no key ref:bad"):
            await m.unwrap("ref:bad", b"w", encryption_context("b", "k"))
    assert keyring.count("decrypt") == 2
    assert denied() == before + 2


async def test_wrap_is_never_cached(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock)
    for _ in range(2):
        assert (await m.wrap(KEY, b"k" * 32, encryption_context("b", "copy"))).wrapped == b"rewrapped"
    assert keyring.count("wrap") == 2


# --- the cache-hit hook -------------------------------------------------------------------


async def test_the_hook_hears_of_each_use_served_from_the_cache_only(keyring: FakeKeyring, clock: Clock) -> None:
    hits: list[Hit] = []
    m = materials(keyring, clock, hits)
    shared, _ = await m.new_object_key(KEY, "b", "k1", 10)
    assert hits == []  # a keyring call: the keyring's to report
    await m.new_object_key(KEY, "b", "k2", 10)
    ctx = encryption_context("b", "k2")
    await m.unwrap(shared.key_ref, shared.wrapped, ctx)
    await m.unwrap(shared.key_ref, shared.wrapped, ctx)
    # The object's own context (not the bucket-wide one the key is wrapped under), and the
    # master key id when this side knows it.
    assert hits == [
        ("generate", shared.key_ref, encryption_context("b", "k2"), KEY),
        ("decrypt", shared.key_ref, ctx, None),
    ]


async def test_a_use_the_hook_refuses_does_not_happen(keyring: FakeKeyring, clock: Clock) -> None:
    refusing = True

    def on_cache_hit(operation: str, key_ref: str, context: Mapping[str, str], key_id: str | None) -> None:
        if refusing:
            raise KeyUnavailable("the audit log cannot be written")

    m = Materials(keyring, reuse=LIMITS, decrypt_seconds=30, clock=clock, on_cache_hit=on_cache_hit)
    first, _ = await m.new_object_key(KEY, "b", "k1", 10)
    await m.unwrap("ref:1", b"w1", encryption_context("b", "k"))
    with pytest.raises(KeyUnavailable, match="the audit log cannot be written"):
        await m.new_object_key(KEY, "b", "k2", 10)
    with pytest.raises(KeyUnavailable, match="the audit log cannot be written"):
        await m.unwrap("ref:1", b"w1", encryption_context("b", "k"))
    assert (keyring.count("generate"), keyring.count("decrypt")) == (1, 1)  # refused on a cache hit
    # The refused object was not counted against the shared key's limits.
    refusing = False
    for i in range(LIMITS.max_objects - 1):
        assert (await m.new_object_key(KEY, "b", f"again{i}", 10))[0] == first
    assert (await m.new_object_key(KEY, "b", "over", 10))[0] != first


# --- ready and close ----------------------------------------------------------------------


async def test_ready_asks_the_keyring(keyring: FakeKeyring, clock: Clock) -> None:
    await materials(keyring, clock).ready(KEY)
    assert keyring.readied == [KEY]


async def test_close_forgets_every_key_and_closes_the_keyring(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock)
    first, _ = await m.new_object_key(KEY, "b", "k1", 10)
    await m.unwrap("ref:1", b"w1", encryption_context("b", "k"))
    await m.close()
    assert keyring.closed
    assert (await m.new_object_key(KEY, "b", "k2", 10))[0] != first
    await m.unwrap("ref:1", b"w1", encryption_context("b", "k"))
    assert (keyring.count("generate"), keyring.count("decrypt")) == (2, 2)


async def test_the_keyring_is_fixed_once_built(keyring: FakeKeyring, clock: Clock) -> None:
    m = materials(keyring, clock)
    assert m.keyring is keyring
    with pytest.raises(AttributeError, match="'keyring'"):
        m.keyring = FakeKeyring()  # type: ignore[misc]  # auditing is wired in, not swapped in
    assert m.keyring is keyring
