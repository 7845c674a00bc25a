"""Locations: where a member runs, as a path such as `zone-a/rack-2/host-7` (issue 17).

Rules:
- A location is 1 to `LOCATION_PARTS_MAX` parts joined by '/', each 1-63 characters of letters,
  digits, '.', '_' or '-'; at most `LOCATION_BYTES_MAX` bytes in all. Nothing else is accepted,
  so a location read from a peer, a config file or a flag is checked by one function.
- The whole path names the host: members with equal locations share a host (several workers of
  one machine), and losing that host loses all of them.
- The first part names the zone: members whose paths start alike share a zone.
- A member whose location is unknown (a membership written before locations existed) has the
  empty location; it counts as a host and zone of its own, named after the member, so an old
  cluster keeps today's guarantee of N distinct nodes.

Placement (claim, preference lists) and the CLI's reports all use these functions, so they agree
on what "the same host" and "the same zone" mean.
"""

from __future__ import annotations

import re

LOCATION_PARTS_MAX = 8
LOCATION_BYTES_MAX = 255
_PART = re.compile(r"[A-Za-z0-9._-]{1,63}")


class LocationError(ValueError):
    pass


def check_location(location: str) -> str:
    """`location` itself when it is a valid path; LocationError saying what is wrong otherwise."""
    if type(location) is not str:
        raise LocationError(f"a location must be a string, got {type(location).__name__}")
    if not location:
        raise LocationError("a location must not be empty")
    if len(location.encode()) > LOCATION_BYTES_MAX:
        raise LocationError(f"location {location[:40]!r}... is longer than {LOCATION_BYTES_MAX} bytes")
    parts = location.split("/")
    if len(parts) > LOCATION_PARTS_MAX:
        raise LocationError(f"location {location!r} has {len(parts)} parts; at most {LOCATION_PARTS_MAX}")
    for part in parts:
        if not _PART.fullmatch(part):
            raise LocationError(
                f"location {location!r}: each part between '/' must be 1-63 letters, digits, '.', '_' or '-'"
            )
    return location


def host_of(member: str, location: str) -> str:
    """The host `member` runs on: its whole location, or the member itself when that is unknown."""
    return location if location else f"member:{member}"


def zone_of(member: str, location: str) -> str:
    """The zone `member` runs in: its location's first part, or the member itself when unknown."""
    return location.split("/", 1)[0] if location else f"member:{member}"


def default_location(hostname: str) -> str:
    """The location of a member that was given none: its host name, made into a valid path part
    (dots kept, anything else outside the allowed characters replaced by '-')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", hostname)[:63] or "localhost"
    return check_location(cleaned)
