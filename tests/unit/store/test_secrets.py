"""mask_secrets and password hashing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.store import mask_secrets
from engine.store.passwords import (
    hash_password,
    hash_password_async,
    verify_password,
    verify_password_async,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _leaves(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _leaves(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _leaves(value)
    else:
        yield obj


def _shape(obj):
    if isinstance(obj, dict):
        return {key: _shape(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_shape(value) for value in obj]
    return None


@given(json_values)
def test_mask_secrets_masks_every_leaf_and_keeps_the_shape(value) -> None:
    masked = mask_secrets(value)
    assert all(leaf == "***" for leaf in _leaves(masked))
    assert _shape(masked) == _shape(value)


def test_mask_secrets_examples() -> None:
    assert mask_secrets({"password": "p", "nested": {"k": 1, "l": [1, None]}}) == {
        "password": "***",
        "nested": {"k": "***", "l": ["***", "***"]},
    }
    assert mask_secrets({}) == {}
    assert mask_secrets("token") == "***"
    original = {"a": "b"}
    mask_secrets(original)
    assert original == {"a": "b"}  # a copy, not in place


def test_password_hash_roundtrip() -> None:
    encoded = hash_password("correct horse")
    assert encoded.startswith("scrypt$") and "correct horse" not in encoded
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct hors", encoded)
    assert hash_password("correct horse") != encoded  # salted


def test_verify_rejects_malformed_hashes() -> None:
    bad_hashes = (None, "", "plain", "bcrypt$1$2$3$4$5", "scrypt$x$8$1$aa$bb", "scrypt$9$8$1$!$!")
    for bad in bad_hashes:
        assert verify_password("pw", bad) is False


async def test_async_variants() -> None:
    encoded = await hash_password_async("pw")
    assert await verify_password_async("pw", encoded)
    assert not await verify_password_async("nope", encoded)
