"""The client's address behind the hub's trusted proxies (`server.trusted_proxies`):
for the login limits and the audit log."""

from __future__ import annotations

import ipaddress


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`text` as an IP address (an IPv4-mapped IPv6 one as IPv4; a port after an
    IPv4 address or a bracketed IPv6 one dropped), or None."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_address(peer: str | None, forwarded: list[str], trusted: list[str]) -> str:
    """The client's address: the `peer`'s, unless the peer is one of the `trusted`
    proxies, then the right-most address of its X-Forwarded-For headers
    (`forwarded`, in order) that is not itself a trusted proxy. The addresses to
    the left of that one are whatever the client wrote, so they are not believed.
    A hop that is not an IP address, or no hop, leaves the peer's address."""
    peer_ip = _ip(peer or "")
    if peer_ip is None:
        return peer or "unknown"
    proxies = {ip for ip in (_ip(t) for t in trusted) if ip is not None}
    if peer_ip not in proxies:
        return str(peer_ip)
    hops = [hop for header in forwarded for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            break
        if ip not in proxies:
            return str(ip)
    return str(peer_ip)
