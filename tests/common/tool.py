"""Small servers and clients for the namespace tests (tests/namespaces.rs).

Only ever talks to the addresses it is given; the tests give it loopback, the guest's
virtual network (10.0.2.0/24) or the test host (198.18.0.0/15), all inside network
namespaces the test made itself. Every blocking call has a timeout.
"""

import argparse
import errno
import hashlib
import os
import socket
import struct
import sys
import threading
import time


def mark_ready(path):
    if path:
        with open(path, "w") as f:
            f.write("ok\n")


def serve_tcp(addr, port, handler, ready):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)
    mark_ready(ready)
    while True:
        c, peer = s.accept()
        c.settimeout(30)
        print("accepted", peer, flush=True)
        threading.Thread(target=handler, args=(c,), daemon=True).start()


def cmd_tcp_download_server(a):
    data = open(a.file, "rb").read()

    def handle(c):
        try:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            c.recv(1)
        except OSError as e:
            print("error", e, flush=True)
        finally:
            c.close()

    serve_tcp(a.addr, a.port, handle, a.ready)


def cmd_tcp_upload_server(a):
    """Reads to EOF, answers with the sha256 (hex) and the byte count."""

    def handle(c):
        if a.log:
            with open(a.log, "a") as f:
                f.write("%s:%d\n" % c.getpeername())
        try:
            h = hashlib.sha256()
            n = 0
            while True:
                b = c.recv(65536)
                if not b:
                    break
                h.update(b)
                n += len(b)
            c.sendall(("%s %d\n" % (h.hexdigest(), n)).encode())
        except OSError as e:
            print("error", e, flush=True)
        finally:
            c.close()

    serve_tcp(a.addr, a.port, handle, a.ready)


def cmd_tcp_get(a):
    s = socket.create_connection((a.host, a.port), timeout=a.timeout)
    h = hashlib.sha256()
    n = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        h.update(b)
        n += len(b)
    s.close()
    print(h.hexdigest(), n)


def cmd_tcp_put(a):
    s = socket.create_connection((a.host, a.port), timeout=a.timeout)
    with open(a.file, "rb") as f:
        s.sendall(f.read())
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        out += b
    s.close()
    print(out.decode().strip())


def cmd_udp_echo_server(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.addr, a.port))
    mark_ready(a.ready)
    while True:
        data, peer = s.recvfrom(65535)
        print("got", len(data), "from", peer, flush=True)
        if a.log:
            with open(a.log, "a") as f:
                f.write("%s:%d %d\n" % (peer[0], peer[1], len(data)))
        s.sendto(b"echo:" + data, peer)


def cmd_udp_echo(a):
    """Sends a datagram, prints the reply; retries a few times (UDP may lose the first one
    while ARP resolves)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(a.timeout)
    s.connect((a.host, a.port))
    msg = a.message.encode()
    for _ in range(a.tries):
        try:
            s.send(msg)
            data = s.recv(65535)
            print(data.decode())
            return
        except socket.timeout:
            continue
        except OSError as e:
            print("ERROR", errno.errorcode.get(e.errno, str(e.errno)))
            return
    print("TIMEOUT")


def cmd_connect_probe(a):
    """Tries a TCP connect; prints OK or the errno name, and the elapsed seconds."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(a.timeout)
    t0 = time.monotonic()
    try:
        s.connect((a.host, a.port))
        r = "OK"
    except socket.timeout:
        r = "TIMEOUT"
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    print(r, "%.3f" % (time.monotonic() - t0))


# --- DNS --------------------------------------------------------------------------------------

def dns_answer(query, name_map):
    """A minimal responder: A records from name_map, NXDOMAIN otherwise."""
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    if qd != 1:
        return None
    i = 12
    labels = []
    while True:
        ln = query[i]
        i += 1
        if ln == 0:
            break
        labels.append(query[i:i + ln].decode("ascii", "replace"))
        i += ln
    qtype, qclass = struct.unpack("!HH", query[i:i + 4])
    question = query[12:i + 4]
    name = ".".join(labels).lower()
    addr = name_map.get(name)
    rd = flags & 0x0100
    if addr is not None and qtype == 1 and qclass == 1:
        hdr = struct.pack("!HHHHHH", qid, 0x8180 | rd, 1, 1, 0, 0)
        ans = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(addr)
        return hdr + question + ans
    rcode = 0 if addr is not None else 3
    hdr = struct.pack("!HHHHHH", qid, 0x8180 | rd | rcode, 1, 0, 0, 0)
    return hdr + question


def cmd_dns_server(a):
    name_map = {}
    for kv in a.record:
        k, v = kv.split("=", 1)
        name_map[k.lower()] = v
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((a.addr, a.port))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((a.addr, a.port))
    t.listen(8)

    def udp_loop():
        while True:
            q, peer = u.recvfrom(4096)
            print("udp query from", peer, flush=True)
            r = dns_answer(q, name_map)
            if r:
                u.sendto(r, peer)

    def tcp_conn(c):
        try:
            c.settimeout(10)
            hdr = recv_exact(c, 2)
            q = recv_exact(c, struct.unpack("!H", hdr)[0])
            r = dns_answer(q, name_map)
            if r:
                c.sendall(struct.pack("!H", len(r)) + r)
        except OSError:
            pass
        finally:
            c.close()

    def tcp_loop():
        while True:
            c, peer = t.accept()
            print("tcp query from", peer, flush=True)
            threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()

    threading.Thread(target=udp_loop, daemon=True).start()
    mark_ready(a.ready)
    tcp_loop()


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            raise OSError("short read")
        out += b
    return out


def build_query(name, qid):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack("!HH", 1, 1)


def parse_answer(r, qid):
    rid, flags, qd, an = struct.unpack("!HHHH", r[:8])
    if rid != qid:
        return "BADID"
    rcode = flags & 0xF
    if rcode != 0:
        return "RCODE%d" % rcode
    i = 12
    for _ in range(qd):
        while r[i] != 0:
            i += r[i] + 1
        i += 5
    addrs = []
    for _ in range(an):
        if r[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while r[i] != 0:
                i += r[i] + 1
            i += 1
        rtype, rclass, _ttl, rdlen = struct.unpack("!HHIH", r[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(r[i:i + 4]))
        i += rdlen
    return " ".join(addrs) if addrs else "NOANSWER"


def cmd_dns_query(a):
    qid = os.getpid() & 0xFFFF
    q = build_query(a.name, qid)
    try:
        if a.tcp:
            s = socket.create_connection((a.server, 53), timeout=a.timeout)
            s.sendall(struct.pack("!H", len(q)) + q)
            ln = struct.unpack("!H", recv_exact(s, 2))[0]
            r = recv_exact(s, ln)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(a.timeout)
            r = None
            for _ in range(3):
                s.sendto(q, (a.server, 53))
                try:
                    r, _peer = s.recvfrom(4096)
                    break
                except socket.timeout:
                    continue
            if r is None:
                print("TIMEOUT")
                return
        print(parse_answer(r, qid))
    except socket.timeout:
        print("TIMEOUT")
    except OSError as e:
        print("ERROR", errno.errorcode.get(e.errno, str(e)))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)

    def server(name, fn):
        sp = sub.add_parser(name)
        sp.add_argument("--addr", required=True)
        sp.add_argument("--port", type=int, required=True)
        sp.add_argument("--ready")
        sp.set_defaults(fn=fn)
        return sp

    server("tcp-download-server", cmd_tcp_download_server).add_argument("--file", required=True)
    server("tcp-upload-server", cmd_tcp_upload_server).add_argument("--log")
    server("udp-echo-server", cmd_udp_echo_server).add_argument("--log")
    server("dns-server", cmd_dns_server).add_argument("--record", action="append", default=[])

    def client(name, fn):
        sp = sub.add_parser(name)
        sp.add_argument("host")
        sp.add_argument("port", type=int)
        sp.add_argument("--timeout", type=float, default=10)
        sp.set_defaults(fn=fn)
        return sp

    client("tcp-get", cmd_tcp_get)
    client("tcp-put", cmd_tcp_put).add_argument("--file", required=True)
    u = client("udp-echo", cmd_udp_echo)
    u.add_argument("--message", default="hello")
    u.add_argument("--tries", type=int, default=5)
    u.set_defaults(timeout=1.0)
    client("connect-probe", cmd_connect_probe)

    q = sub.add_parser("dns-query")
    q.add_argument("server")
    q.add_argument("name")
    q.add_argument("--tcp", action="store_true")
    q.add_argument("--timeout", type=float, default=2)
    q.set_defaults(fn=cmd_dns_query)

    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
