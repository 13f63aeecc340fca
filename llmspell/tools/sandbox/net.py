"""The network half of the sandbox: which URLs a tool may reach, decided before connecting.

Naive SSRF checks fail on the forms an attacker picks, so a host is normalised before it is
judged: brackets and a trailing dot go, IPv4 written as one number or in octal or hex
(2130706433, 0x7f000001, 0177.0.0.1, 127.1) is read the way browsers and inet_aton read it,
IPv6 forms that embed an IPv4 address (::ffff:127.0.0.1, 6to4, NAT64, Teredo) are judged by the
address they carry. A host name is judged by every address it resolves to; the addresses checked
are the ones a connection may use (see sandbox/http.py, which pins them), so a DNS answer that
changes between the check and the connect cannot bypass the policy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit, urlunsplit

from llmspell.tools.errors import ToolError
from llmspell.tools.sandbox.rules import Rule, refuse

if TYPE_CHECKING:
    from llmspell.tools.sandbox.policy import Sandbox

__all__ = [
    "METADATA_ADDRESSES", "METADATA_HOSTS", "IPAddress", "ParsedURL", "Target", "acheck_host",
    "check_host", "check_static", "classify", "effective_address", "format_address", "parse_host",
    "parse_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata services hand out cloud credentials: refused even when private addresses
# are allowed, unless the exact address is on the allow-list.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
    "169.254.170.2",  # AWS ECS task metadata
    "fd00:ec2::254",  # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
))
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog",
                            "instance-data", "instance-data.ec2.internal"})
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not public
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_BAD_HOST_CHARS = frozenset(" \t\r\n\\<>\"'`{}|^")


@dataclass(frozen=True)
class ParsedURL:
    url: str  # the URL to request: numeric IPv4 host forms rewritten to dotted quads
    scheme: str
    host: str  # canonical: lower case, no brackets, no trailing dot, an IP in standard form
    port: int
    ip: IPAddress | None  # the host, when it is an address literal (in any accepted form)

    @property
    def shown_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


@dataclass(frozen=True)
class Target:
    """A URL the policy allows, with the addresses a connection to it may use."""

    url: str
    host: str
    port: int
    addresses: tuple[str, ...]


# -- host forms ---------------------------------------------------------------------------------


def _ipv4_number(part: str) -> int | None:
    """One part of an IPv4 host as the URL standard reads it: 0x hex, 0-prefixed octal, or
    decimal; None when it is not a number."""
    text = part.lower()
    base = 10
    if text.startswith("0x"):
        text, base = text[2:], 16
    elif len(text) > 1 and text.startswith("0"):
        text, base = text[1:], 8
    if text == "":
        return 0 if base == 16 else None
    try:
        return int(text, base)
    except ValueError:
        return None


def _ends_in_number(parts: list[str]) -> bool:
    last = parts[-1].lower()
    return last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef"
                                                              for c in last[2:]))


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """2130706433, 0x7f000001, 0177.0.0.1, 127.1: the forms inet_aton and browsers accept.
    Raises ValueError for a host that ends in a number but is no valid address ('foo.1')."""
    parts = host.split(".")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    if not parts or not _ends_in_number(parts):
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        raise ValueError(f"{host!r} ends in a number but is not an IPv4 address")
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise ValueError(f"{host!r} is out of range for an IPv4 address")
    address = values[-1]
    for i, n in enumerate(values[:-1]):
        address += n << (8 * (3 - i))
    return ipaddress.IPv4Address(address)


def parse_host(host: str) -> tuple[str, IPAddress | None]:
    """(canonical host, the address it is when it is a literal). ValueError when malformed."""
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.replace("%25", "%")  # an IPv6 zone id arrives percent-encoded in a URL
    if not text or any(c in _BAD_HOST_CHARS for c in text):
        raise ValueError(f"{host!r} is not a valid host")
    ip: IPAddress | None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None if ":" in text else _numeric_ipv4(text)
        if ip is None and ":" in text:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    if ip is not None:
        return format_address(ip), ip
    return text.rstrip("."), None


def format_address(ip: IPAddress) -> str:
    """An address in its standard text form; an IPv4-mapped one keeps its dotted quad
    (::ffff:127.0.0.1, as Python 3.13 prints it; 3.11 prints ::ffff:7f00:1)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def effective_address(ip: IPAddress) -> IPAddress:
    """The address a connection really reaches: an IPv4-mapped IPv6 address is its IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (and may be routed to): 6to4, Teredo, NAT64."""
    found: list[ipaddress.IPv4Address] = []
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64 or (ip in _V4_COMPATIBLE and int(ip) > 1):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def classify(ip: IPAddress) -> str | None:
    """Why an address is not a public one ('a loopback address'), or None when it is public."""
    ip = effective_address(ip)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    reason = _own_class(ip)
    if reason is None and isinstance(ip, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(ip):
            inner_reason = classify(inner)
            if inner_reason is not None:
                return f"an IPv6 address embedding {inner}, {inner_reason}"
    return reason


def _own_class(ip: IPAddress) -> str | None:
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED, "a shared (CGNAT) address"),
        (not ip.is_global, "a non-public address"),
    )
    return next((why for hit, why in checks if hit), None)


# -- URLs ---------------------------------------------------------------------------------------


def parse_url(tool: str, url: str) -> ParsedURL:
    """Split and normalise a URL; a malformed one is a ToolError, a scheme other than http(s)
    a refusal."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ToolError(tool, f"{url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        shown = parts.scheme or "no scheme"
        raise refuse(tool, Rule.scheme, f"{url!r}: only http and https URLs may be fetched "
                                        f"(this one has {shown})", url)
    raw_host = _raw_host(parts)
    if not raw_host:
        raise ToolError(tool, f"{url!r} is not a valid URL: it has no host")
    try:
        host, ip = parse_host(raw_host)
    except ValueError as exc:
        raise ToolError(tool, f"{url!r} is not a valid URL: {exc}") from None
    port = port or (443 if parts.scheme == "https" else 80)
    return ParsedURL(url=_rewritten(parts, raw_host, host, ip), scheme=parts.scheme, host=host,
                     port=port, ip=ip)


def _raw_host(parts: SplitResult) -> str:
    netloc = parts.netloc.rpartition("@")[2]
    if netloc.startswith("["):
        return netloc[: netloc.find("]") + 1]
    return netloc.rpartition(":")[0] if ":" in netloc else netloc


def _rewritten(parts: SplitResult, raw_host: str, host: str, ip: IPAddress | None) -> str:
    """The URL with a numeric IPv4 form (0x7f000001) in its dotted form, which is what
    browsers request and what HTTP clients accept."""
    if not isinstance(ip, ipaddress.IPv4Address) or raw_host == host:
        return urlunsplit(parts)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    netloc = host + hostport[len(raw_host):]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc}" if userinfo else netloc))


def _host_matches(host: str, ip: IPAddress | None, entries: Sequence[str]) -> bool:
    """Exact host names, `*.example.com` for its subdomains, or IP addresses in any form."""
    for entry in entries:
        try:
            name, entry_ip = parse_host(entry.removeprefix("*."))
        except ValueError:
            continue
        if entry_ip is not None:
            matched = ip is not None and effective_address(ip) == effective_address(entry_ip)
        elif entry.startswith("*."):
            matched = host.endswith(f".{name}")
        else:
            matched = host == name
        if matched:
            return True
    return False


def check_static(policy: Sandbox, tool: str, url: str) -> ParsedURL:
    """The checks that need no DNS: scheme, network on, the host list, metadata names."""
    parsed = parse_url(tool, url)
    if not policy.allow_network:
        raise refuse(tool, Rule.no_network, f"{url!r}: this job's sandbox allows no network", url)
    if policy.allowed_hosts and not _host_matches(parsed.host, parsed.ip, policy.allowed_hosts):
        raise refuse(tool, Rule.host_not_allowed, f"{url!r}: host {parsed.shown_host} is not "
                     f"in the allowed hosts ({', '.join(policy.allowed_hosts)})", url)
    if parsed.host in METADATA_HOSTS and not _host_matches(
            parsed.host, None, policy.allowed_private_hosts):
        raise refuse(tool, Rule.metadata_address, f"{url!r}: {parsed.host} is a cloud metadata "
                     "service", url)
    return parsed


def _check_address(policy: Sandbox, tool: str, parsed: ParsedURL, address: IPAddress,
                   subject: str) -> None:
    listed = _host_matches("", address, policy.allowed_private_hosts)
    reason = classify(address)
    if reason is None or listed:
        return
    shown = _shown(parsed, address)
    if effective_address(address) in METADATA_ADDRESSES:
        raise refuse(tool, Rule.metadata_address, f"{shown} is {reason}", subject)
    name_opened = parsed.ip is None and _host_matches(parsed.host, None,
                                                      policy.allowed_private_hosts)
    if not (policy.allow_private_network or name_opened):
        raise refuse(tool, Rule.private_address, f"{shown} is {reason}", subject)


def _shown(parsed: ParsedURL, address: IPAddress) -> str:
    if parsed.ip is None:
        return f"{parsed.host} resolves to {address}, which"
    real = effective_address(address)
    return str(real) if parsed.host == str(real) else f"{parsed.host} ({real})"


def _judge(policy: Sandbox, tool: str, parsed: ParsedURL, addresses: Sequence[IPAddress],
           subject: str) -> Target:
    if not addresses:
        raise ToolError(tool, f"{parsed.host} resolves to no address")
    for address in addresses:
        _check_address(policy, tool, parsed, address, subject)
    # Connect to the checked address itself; an IPv4-mapped one through plain IPv4.
    pinned = tuple(dict.fromkeys(str(effective_address(a)) for a in addresses))
    return Target(url=parsed.url, host=parsed.host, port=parsed.port, addresses=pinned)


def _from_infos(infos: Sequence[tuple[object, ...]]) -> list[IPAddress]:
    found: list[IPAddress] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        found.append(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))
    return list(dict.fromkeys(found))


def _resolve_error(tool: str, host: str, exc: OSError) -> ToolError:
    return ToolError(tool, f"cannot resolve host {host!r}: {exc.strerror or exc}")


def check_host(policy: Sandbox, tool: str, parsed: ParsedURL, subject: str = "") -> Target:
    """Resolve (blocking) and judge every address."""
    if parsed.ip is not None:
        return _judge(policy, tool, parsed, [parsed.ip], subject or parsed.url)
    try:
        infos = socket.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _resolve_error(tool, parsed.host, exc) from None
    return _judge(policy, tool, parsed, _from_infos(infos), subject or parsed.url)


async def acheck_host(policy: Sandbox, tool: str, parsed: ParsedURL, subject: str = ""
                      ) -> Target:
    """Resolve (on the loop's resolver, under the policy's network timeout) and judge."""
    if parsed.ip is not None:
        return _judge(policy, tool, parsed, [parsed.ip], subject or parsed.url)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(policy.network_timeout_s):
            infos = await loop.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise ToolError(tool, f"resolving {parsed.host!r} took longer than "
                              f"{policy.network_timeout_s:g}s") from None
    except OSError as exc:
        raise _resolve_error(tool, parsed.host, exc) from None
    return _judge(policy, tool, parsed, _from_infos(infos), subject or parsed.url)
