"""Finding the sockets open before the capture, and their cookies (on this very process)."""

from __future__ import annotations

import os
import socket
import struct

from collector import preexisting_sockets as ps


def test_socket_links_give_their_inode():
    assert ps.socket_inode(b"socket:[12345]") == 12345
    assert ps.socket_inode(b"pipe:[12345]") is None
    assert ps.socket_inode(b"/tmp/socket:[1]") is None
    assert ps.socket_inode(b"socket:[12]x") is None


def test_each_socket_once_with_the_cookie_the_kernel_gives_it():
    with socket.socket() as listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        shared = os.dup(listener.fileno())  # the same socket twice: counted once
        try:
            found = [c for pid, c in ps.socket_cookies() if pid == os.getpid()]
        finally:
            os.close(shared)
        for sock in (listener, udp):
            cookie = struct.unpack("<Q", sock.getsockopt(socket.SOL_SOCKET, ps.SO_COOKIE, 8))[0]
            assert found.count(cookie) == 1


def test_a_closed_fd_is_an_error_not_a_cookie():
    pidfd = os.pidfd_open(os.getpid())
    try:
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        try:
            ps.socket_cookie(pidfd, r)
        except OSError:
            pass
        else:
            raise AssertionError("a closed fd gave a cookie")
    finally:
        os.close(pidfd)
