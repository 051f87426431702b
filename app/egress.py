"""Outbound-address guard: jobq only connects to public addresses unless told otherwise.

Anything that makes requests on behalf of a job submitter (the `http` task, completion
callbacks) goes through `guarded_client`, so a job cannot reach the worker's own machine,
its private network or a cloud metadata service (SSRF). The check happens where the socket is
opened, on the very addresses that are then connected to: DNS cannot answer differently between
the check and the connect (rebinding), and every redirect hop is a new, checked connection.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import typing
from collections.abc import Iterable
from functools import lru_cache

import httpcore
import httpx

from app.config import IPNetwork
from app.errors import JobqError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges that carry an IPv4 address in their low 32 bits (NAT64, RFC 6052): judged by it.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_METADATA = ipaddress.IPv4Address("169.254.169.254")
SETTING = "JOBQ_HTTP_ALLOWED_NETWORKS"


class EgressDenied(JobqError):
    """A connection to an address the egress policy refuses; retrying cannot help."""

    status_code = 403
    code = "egress_denied"


def _judged(ip: IPAddress) -> IPAddress:
    """The address whose nature decides: the IPv4 inside mapped, NAT64 and 6to4 addresses."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def refusal_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address (None when it is)."""
    ip = _judged(ip)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip == _METADATA:
        return "the cloud metadata service (link-local)"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a globally routable address"  # e.g. 100.64.0.0/10 carrier-grade NAT
    return None


class EgressPolicy:
    """Public unicast addresses are allowed, others only inside the allowed networks."""

    def __init__(self, allowed: Iterable[IPNetwork] = ()) -> None:
        self.allowed = tuple(allowed)

    def check(self, ip: IPAddress, host: str) -> None:
        """Raise EgressDenied unless `ip` (an address of `host`) may be connected to."""
        reason = refusal_reason(ip)
        if reason is None or any(a in n for a in {ip, _judged(ip)} for n in self.allowed):
            return
        named = host if host == str(ip) else f"{host} ({ip})"
        raise EgressDenied(
            f"refused to connect to {named}: {reason}; allow it with {SETTING}",
            address=str(ip),
        )

    def resolve(self, host: str, port: int) -> list[str]:
        """Every address `host` resolves to, all checked; EgressDenied if any is refused.

        All of them, not only the first: a name that also resolves to a private address
        would otherwise reach it whenever the public one is down or tried second.
        """
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        addresses: list[str] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            text = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone (%eth0)
            self.check(ipaddress.ip_address(text), host)
            if text not in addresses:
                addresses.append(text)
        return addresses


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket layer, resolving and vetting the host before connecting by address."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Connect to the first reachable vetted address; TLS still verifies `host` (SNI)."""
        error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in self._policy.resolve(host, port):
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host!r} has no address")


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs milliseconds; one context serves every connection.
    return httpx.create_ssl_context(trust_env=False)


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport whose every TCP connection goes through GuardedBackend."""

    def __init__(self, policy: EgressPolicy, *, max_connections: int = 4) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False)
        # httpx has no parameter for httpcore's network backend: replace its pool with one
        # that has ours (the same settings HTTPTransport would use, without proxies).
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=max_connections,
            network_backend=GuardedBackend(policy),
        )


def guarded_client(policy: EgressPolicy, **options: typing.Any) -> httpx.Client:
    """An httpx.Client that cannot reach refused addresses, and ignores proxy variables (a
    proxy would make the guard vet the proxy instead of the destination)."""
    return httpx.Client(transport=GuardedTransport(policy), trust_env=False, **options)
