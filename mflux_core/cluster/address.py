"""`--cluster host:port`: is a Ray head there? Asked before ray.init, which retries an unreachable address for
about 14 minutes (Ray 2.60: 20 tries of its GCS client, each measured here at about 41 s of gRPC waits) and has
no option to shorten that."""

import socket

from mflux_core.request import whole_text

PROBE_TIMEOUT_S = 5  # a head on the local network answers in milliseconds


def check_head(address: str) -> None:
    """Raise ConnectionError with one sentence when `address` is not host:port or nothing listens there."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 address in brackets
    if not host or not 0 < (whole_text(port) or 0) < 65536:
        raise ConnectionError(f"'{address}' is not a Ray address: give the head's host:port as `ray start --head` "
                              "printed it (for example 192.168.1.10:6379), or `auto` on a machine that joined with "
                              "`ray start`.")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except socket.gaierror:
        raise ConnectionError(f"the name '{host}' in {address} does not resolve to a machine: check its spelling, "
                              "or give the head's IP address as `ray start --head` printed it.") from None
    except OSError as error:  # refused, unreachable, or no answer within the timeout
        raise ConnectionError(f"nothing answers at {address} ({error.strerror or 'no answer'}): check that "
                              f"`ray start --head --port={port}` runs on that machine and that port {port} is open "
                              "to this one.") from None
