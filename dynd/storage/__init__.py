"""Durable storage behind one interface (`Store`), with LMDB and in-memory implementations."""
