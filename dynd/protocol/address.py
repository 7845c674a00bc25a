"""HOST:PORT parsing shared by the node, the client and dynctl."""

from __future__ import annotations

DEFAULT_PORT = 7400


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split "host:port", "[v6]:port", "host" or ":port" into (host, port); raise ValueError if bad."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"bad address {text!r}: missing ']'")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ValueError(f"bad address {text!r}: write IPv6 addresses as [addr]:port")
    else:
        host, port_text = text, ""
    host = host or "127.0.0.1"
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {text!r}: must be 1..65535")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
