"""Wire protocol: messages, codec, framing and error codes. No I/O here."""

PROTOCOL_VERSION = 1
