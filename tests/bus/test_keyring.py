"""The keyring text (``FLEET_BUS_PUBLIC_KEYS``: ``keyid=public,...``): one reader,
:func:`bus.keys.split_keyring`, under the checked :func:`bus.keys.parse_keyring`."""

from __future__ import annotations

import pytest

from bus.keys import (
    BadKey,
    format_keyring,
    keyring_of,
    new_private_key,
    parse_keyring,
    split_keyring,
)


def test_a_keyring_text_round_trips_and_is_checked() -> None:
    ring = keyring_of([("ezra", new_private_key()), ("operator", new_private_key())])
    text = format_keyring(ring)
    assert split_keyring(text) == ring
    assert {key.name for key in parse_keyring(text).values()} == {"ezra", "operator"}
    assert split_keyring("") == {} and split_keyring(" , ") == {}


@pytest.mark.parametrize("text", ["ezra", "=abc", "ezra:0123456789abcdef=", "a=b,c"])
def test_an_item_that_is_no_id_and_key_is_refused(text: str) -> None:
    with pytest.raises(BadKey, match="is not ID=KEY"):
        split_keyring(text)


def test_a_key_id_that_does_not_match_its_key_is_refused() -> None:
    ring = keyring_of([("ezra", new_private_key())])
    (ident, public), = ring.items()
    with pytest.raises(BadKey, match="does not match its public key"):
        parse_keyring(f"{ident[:-1]}{'0' if ident[-1] != '0' else '1'}={public}")
