"""The delay line's per-destination delays as given on its command line."""

from __future__ import annotations

import pytest

from fleet.lab.delayline import parse_routes


def test_routes_in_seconds() -> None:
    assert parse_routes(["10.231.1.1=80~8", "10.231.1.12=40"]) == {
        "10.231.1.1": (0.08, 0.008), "10.231.1.12": (0.04, 0.0)}


@pytest.mark.parametrize("item", ["10.231.1.1", "10.231.1.1=", "10.231.1.1=x", "host=40",
                                  "10.231.1.1=40~", "10.231.1.1=40;rm"])
def test_bad_route_is_refused(item: str) -> None:
    with pytest.raises(SystemExit, match="is not ADDR=MS"):
        parse_routes([item])
