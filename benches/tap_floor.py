#!/usr/bin/env python3
"""The floor of any TAP path from a host TCP socket to a guest, with no TCP work at all.

A loopback sender streams into a socket; one process moves its bytes into a TAP as 65000-byte
frames, the way slirpnet's host → guest path does (a MSG_PEEK copy out of the socket, a
`writev` into the TAP, a MSG_TRUNC discard standing for the guest's ACK), and reports the rate
and the relay's CPU. The frames go to a MAC nobody has, so the guest's stack copies each one
in and drops it at once: what is measured is the two copies and three system calls, not TCP.
Modes: `peek` (the whole path), `peekonly` (no TAP write), `writeonly` (the TAP write of a
buffer never refilled: the peek advances without copying), and `splice` (pipe into the TAP,
which the kernel refuses: tun has no splice_write).

Run it as root: `python3 benches/tap_floor.py peek 4`. It always works inside a network namespace
of its own (it re-runs itself under `unshare -n` first), so no frame leaves.
docs/performance.md ("The TAP path's floor") has the figures.
"""
import fcntl
import os
import resource
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
SO_PEEK_OFF = 42
F_SETPIPE_SZ = 1031
FRAME = 65000
PORT = 5301
# Ethernet to a MAC nobody has, then room for IPv4 and TCP headers: dropped as soon as it is in.
HEADER = bytes.fromhex("02aabbccddee" "021122334455" "0800") + bytes(40)


def open_tap():
    tap = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", b"tapfloor", IFF_TAP | IFF_NO_PI))
    if os.system("ip link set tapfloor mtu 65520 up") != 0:
        sys.exit("tap_floor.py: could not bring tapfloor up")
    return tap


def stream_into(port):
    """A child that writes to 127.0.0.1:port as fast as it can, until it is killed."""
    pid = os.fork()
    if pid == 0:
        conn = socket.create_connection(("127.0.0.1", port))
        chunk = b"x" * (256 * 1024)
        try:
            while True:
                conn.sendall(chunk)
        except OSError:
            os._exit(0)
    return pid


def relay(mode, sock, tap, seconds):
    moved = 0
    start = time.monotonic()
    if mode == "splice":
        read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, F_SETPIPE_SZ, 1 << 20)
        while time.monotonic() - start < seconds:
            os.write(write_end, HEADER)
            n = os.splice(sock.fileno(), write_end, FRAME)
            os.splice(read_end, tap, len(HEADER) + n)  # EINVAL: the TAP takes no splice
            moved += n
        return moved
    sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    frame = memoryview(bytearray(FRAME))
    peek_flags = socket.MSG_PEEK | (socket.MSG_TRUNC if mode == "writeonly" else 0)
    while time.monotonic() - start < seconds:
        n = sock.recv_into(frame, FRAME, peek_flags)
        if mode != "peekonly":
            os.writev(tap, [HEADER, frame[:n]])
        sock.recv(n, socket.MSG_TRUNC)
        moved += n
    return moved


NETNS_MARK = "TAP_FLOOR_OWN_NETNS"


def main():
    if os.environ.get(NETNS_MARK) != "1":
        # Always in a namespace of its own: the TAP and the loopback stream stay there.
        os.environ[NETNS_MARK] = "1"
        script = 'ip link set lo up && exec python3 "$0" "$@"'
        os.execvp("unshare", ["unshare", "-n", "sh", "-c", script, __file__, *sys.argv[1:]])
    mode = sys.argv[1] if len(sys.argv) > 1 else "peek"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    if mode not in ("peek", "peekonly", "writeonly", "splice"):
        sys.exit(f"tap_floor.py: unknown mode {mode!r}")
    tap = open_tap()
    listener = socket.socket()
    listener.bind(("127.0.0.1", PORT))
    listener.listen(1)
    sender = stream_into(PORT)
    sock, _ = listener.accept()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    try:
        moved = relay(mode, sock, tap, seconds)
    except OSError as error:
        sys.exit(f"{mode}: {error}")
    finally:
        os.kill(sender, 9)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"{mode}: {moved * 8 / wall / 1e9:.2f} Gbit/s, relay CPU {cpu / wall:.2f} cores")


if __name__ == "__main__":
    main()
