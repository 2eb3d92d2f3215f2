"""The client address django-axes counts failed logins against (settings AXES_CLIENT_IP_CALLABLE).

Without CLIENT_IP_HEADER it is the TCP peer (REMOTE_ADDR): right when nothing stands in front of the
process. Behind a reverse proxy the peer is the proxy, so CLIENT_IP_HEADER names the header the proxy
writes (X-Forwarded-For, X-Real-IP) and the address comes from that header only. Each proxy appends the
address it received the request from, so the entry CLIENT_IP_PROXY_COUNT places from the right is the
one the outermost trusted proxy wrote; everything to its left came from the client and is ignored.

django-ipware (axes' optional resolver) reads the left-most entry by default, which is the one a
client can write; this reads exactly the entry the proxy wrote, or nothing.
"""

import ipaddress

from django.conf import settings


def client_ip(request) -> str | None:
    """The client's address, or None when the configured header is missing or that entry is not an
    address (axes then counts such requests together, by username alone)."""
    if not settings.CLIENT_IP_HEADER:
        return request.META.get("REMOTE_ADDR")
    key = "HTTP_" + settings.CLIENT_IP_HEADER.upper().replace("-", "_")
    entries = [entry.strip() for entry in request.META.get(key, "").split(",")]
    if len(entries) < settings.CLIENT_IP_PROXY_COUNT or not entries[-1]:
        return None
    try:
        return str(ipaddress.ip_address(entries[-settings.CLIENT_IP_PROXY_COUNT]))
    except ValueError:
        return None
