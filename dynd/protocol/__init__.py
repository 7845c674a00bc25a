"""Wire protocol: messages, codec, framing and error codes. No I/O here."""

# 2: the hello carries credentials and answers with the connection's roles; peers prove the
# cluster secret (hello_proof). A node and a client of different versions refuse each other's hello
# with a clear protocol_version error rather than an unknown field.
PROTOCOL_VERSION = 2
