"""Every message has a role, and the role table says what the design says."""

from __future__ import annotations

import dataclasses

from dynd.protocol import auth, messages


def test_every_message_is_a_request_with_a_role_a_handshake_or_a_reply() -> None:
    for cls in messages.MESSAGE_TYPES:
        kinds = [cls in messages.REQUIRED_ROLE, cls in messages.HANDSHAKE_TYPES, cls in messages.REPLY_TYPES]
        assert kinds.count(True) == 1, f"{cls.__name__} must be exactly one of: a request with a role, a handshake frame, a reply"
    for cls in messages.REQUIRED_ROLE:
        assert cls in messages.MESSAGE_TYPES
        assert messages.REQUIRED_ROLE[cls] in auth.ROLES


def test_the_paper_contract_client_operations_are_client_role() -> None:
    for cls in (messages.Get, messages.Put, messages.Delete, messages.Ping, messages.RingGet):
        assert messages.REQUIRED_ROLE[cls] == auth.CLIENT


def test_configuration_changes_are_admin_and_replication_is_peer() -> None:
    for cls in (messages.ClusterJoin, messages.ClusterLeave, messages.ClusterRemove, messages.RepairStart):
        assert messages.REQUIRED_ROLE[cls] == auth.ADMIN
    for cls in (messages.Replicate, messages.Fetch, messages.Handoff, messages.Gossip, messages.TreeRoots, messages.TreeRootsCompare, messages.TreeLevel, messages.SegmentKeys):
        assert messages.REQUIRED_ROLE[cls] == auth.PEER


def test_a_forwarded_request_needs_the_peer_role() -> None:
    get = messages.Get(id=1, key=b"k")
    assert messages.required_role(get) == auth.CLIENT
    assert messages.required_role(dataclasses.replace(get, forwarded=True)) == auth.PEER
    put = messages.Put(id=1, key=b"k", value=b"v", forwarded=True)
    assert messages.required_role(put) == auth.PEER
    assert messages.required_role(messages.GetOk(id=1, siblings=[], context=b"")) is None


def test_roles_nest() -> None:
    assert auth.ROLE_GRANTS[auth.CLIENT] < auth.ROLE_GRANTS[auth.ADMIN] < auth.ROLE_GRANTS[auth.PEER]


def test_backups_are_admin_only() -> None:
    """A backup is every key and value the node holds: no client role reaches it."""
    for cls in (messages.BackupStart, messages.BackupRead, messages.BackupEnd):
        assert messages.REQUIRED_ROLE[cls] == auth.ADMIN
