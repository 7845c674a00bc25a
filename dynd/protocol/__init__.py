"""Wire protocol: messages, codec, framing and error codes; what both ends of a connection share
(the hello's credentials in `auth`, the sans-IO TLS layer in `tls`, where a key lives in
`keyspace`). No network I/O here: only `auth` and `tls` read credential files."""

# 2: the hello carries credentials and answers with the connection's roles; peers prove the
# cluster secret (hello_proof). A node and a client of different versions refuse each other's hello
# with a clear protocol_version error rather than an unknown field.
PROTOCOL_VERSION = 2
