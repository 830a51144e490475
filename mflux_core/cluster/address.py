"""`--cluster host:port` (or `auto`): is a Ray head there? Asked before ray.init, which retries an unreachable
address, or one where something else listens, for about 14 minutes (Ray 2.60: 20 tries of its GCS client, each
measured here at about 41 s of gRPC waits) and has no option to shorten that."""

import socket

from mflux_core.request import whole_text

PROBE_TIMEOUT_S = 5  # a head on the local network answers in milliseconds
HTTP_PROBE_TIMEOUT_S = 2  # how long a listener has to answer an HTTP request before it is taken for not speaking it


def check_head(address: str) -> None:
    """Raise ConnectionError with one sentence when `address` is not host:port or nothing listens there."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 address in brackets
    if not host or not 0 < (whole_text(port) or 0) < 65536:
        raise ConnectionError(f"'{address}' is not a Ray address: give the head's host:port as `ray start --head` "
                              "printed it (for example 192.168.1.10:6379), or `auto` on a machine that joined with "
                              "`ray start`.")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S) as connection:
            web_server = speaks_http(connection)
    except socket.gaierror:
        raise ConnectionError(f"the name '{host}' in {address} does not resolve to a machine: check its spelling, "
                              "or give the head's IP address as `ray start --head` printed it.") from None
    except OSError as error:  # refused, unreachable, or no answer within the timeout
        raise ConnectionError(f"nothing answers at {address} ({error.strerror or 'no answer'}): check that "
                              f"`ray start --head --port={port}` runs on that machine and that port {port} is open "
                              "to this one.") from None
    if web_server:
        raise ConnectionError(f"a web server answers at {address}, not a Ray head: give the port `ray start --head` "
                              "printed (its GCS port, 6379 unless you chose another).")


def speaks_http(connection: socket.socket) -> bool:
    """Whether what listens answers an HTTP/1.0 request in kind (a page, a dashboard, the studio itself): Ray's head
    speaks gRPC (HTTP/2), which answers such a request with binary frames or not at all."""
    try:
        connection.settimeout(HTTP_PROBE_TIMEOUT_S)
        connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return connection.recv(5) == b"HTTP/"
    except OSError:
        return False


def running_cluster_address() -> str:
    """The address `--cluster auto` means: the cluster this machine joined with `ray start` (RAY_ADDRESS, or Ray's
    own note of the last one), checked as an explicit address is."""
    from ray._private.services import canonicalize_bootstrap_address  # Ray's own reading of "auto" (2.60)

    try:
        address = canonicalize_bootstrap_address("auto")
    except ConnectionError:
        address = None
    if not address:
        raise ConnectionError("no Ray cluster runs on this machine: start its head with `ray start --head` (or join "
                              "one with `ray start --address=HEAD:6379`) first, or use --cluster local.")
    check_head(address)
    return address
