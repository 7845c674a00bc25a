import pytest

from dynd.protocol.locations import (
    LOCATION_BYTES_MAX,
    LocationError,
    check_location,
    default_location,
    host_of,
    zone_of,
)


@pytest.mark.parametrize("good", ["host-7", "zone-a/rack-2/host-7", "a.b_c-d", "/".join(["x"] * 8)])
def test_valid_locations_pass_unchanged(good):
    assert check_location(good) == good


@pytest.mark.parametrize(
    "bad",
    ["", "/", "a//b", "a/", "/a", "a b", "zone:a", "/".join(["x"] * 9), "x" * 64, "é", ("a/" * 128) + "a"],
)
def test_invalid_locations_are_refused(bad):
    with pytest.raises(LocationError):
        check_location(bad)


def test_non_string_is_refused():
    with pytest.raises(LocationError):
        check_location(7)  # type: ignore[arg-type]


def test_length_limit_counts_bytes():
    long_path = "/".join(["y" * 63] * 4) + "/yy"
    assert len(long_path.encode()) > LOCATION_BYTES_MAX
    with pytest.raises(LocationError, match="longer"):
        check_location(long_path)


def test_host_is_the_whole_path_and_zone_its_first_part():
    assert host_of("n1", "zone-a/rack-2/host-7") == "zone-a/rack-2/host-7"
    assert zone_of("n1", "zone-a/rack-2/host-7") == "zone-a"
    assert zone_of("n1", "solo") == "solo"


def test_unknown_location_is_a_host_and_zone_of_its_own():
    assert host_of("n1", "") != host_of("n2", "")
    assert zone_of("n1", "") != zone_of("n2", "")
    # No valid location can collide with an unknown member's stand-in.
    with pytest.raises(LocationError):
        check_location(host_of("n1", ""))


def test_default_location_cleans_a_hostname():
    assert default_location("web-3.example.com") == "web-3.example.com"
    assert default_location("weird host!") == "weird-host-"
    assert default_location("") == "localhost"
