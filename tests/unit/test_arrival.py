"""dynd.shell.arrival: how long a connection's bytes waited in the socket before the node read them."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from dynd.shell.arrival import ArrivalReader


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    listener.close()
    receiver.setblocking(False)
    yield sender, receiver
    sender.close()
    receiver.close()


def test_the_wait_in_the_socket_is_measured(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    reader = ArrivalReader(receiver.fileno())
    try:
        sender.sendall(b"hello")
        assert select.select([receiver], [], [], 5)[0], "the bytes arrived"
        time.sleep(0.05)  # the bytes sit unread, as behind a busy event loop: this is what is measured
        data, waited_s = reader.read(1024)
        assert data == b"hello"
        assert 0.05 <= waited_s < 5
        sender.sendall(b"again")
        assert select.select([receiver], [], [], 5)[0]
        data, waited_s = reader.read(1024)
        assert data == b"again" and 0 <= waited_s < 0.05
    finally:
        reader.release()


def test_nothing_to_read_raises_like_os_read_and_release_leaves_the_socket_open(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    reader = ArrivalReader(receiver.fileno())
    with pytest.raises(BlockingIOError):
        reader.read(1024)
    reader.release()
    sender.sendall(b"still open")
    assert select.select([receiver], [], [], 5)[0]
    assert receiver.recv(1024) == b"still open", "the borrowed descriptor was not closed"
    sender.shutdown(socket.SHUT_WR)
    assert select.select([receiver], [], [], 5)[0]
    reader = ArrivalReader(receiver.fileno())
    try:
        assert reader.read(1024) == (b"", 0.0)
    finally:
        reader.release()
