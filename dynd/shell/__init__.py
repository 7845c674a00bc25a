"""The thin trio layer around the core: TCP server, storage committer, signals."""
