"""Small servers and clients for the namespace tests (tests/namespaces.rs and
tests/namespaces_forward.rs).

Only ever talks to the addresses it is given; the tests give it loopback, the guest's
virtual network (10.0.2.0/24, fd00::/64), the test host (198.18.0.0/15, fd99::/64), or the
helper's API socket
(a Unix socket in the test's private /tmp), all inside network namespaces the test made
itself. Every blocking call has a timeout (servers excepted: they die with the test).
"""

import argparse
import errno
import hashlib
import json
import os
import select
import socket
import struct
import sys
import threading
import time


def family(addr):
    """The address family of a numeric address (IPv6 ones contain a colon)."""
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def mark_ready(path):
    if path:
        with open(path, "w") as f:
            f.write("ok\n")


def peer_text(peer):
    """ADDR:PORT, or [ADDR]:PORT for IPv6."""
    if ":" in peer[0]:
        return "[%s]:%d" % peer[:2]
    return "%s:%d" % peer[:2]


def log_peer(path, peer):
    if path:
        with open(path, "a") as f:
            f.write(peer_text(peer) + "\n")


def serve_tcp(addr, port, handler, ready, log=None):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ":" in addr:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    s.listen(512)
    mark_ready(ready)
    while True:
        c, peer = s.accept()
        c.settimeout(30)
        print("accepted", peer, flush=True)
        log_peer(log, peer)
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

    serve_tcp(a.addr, a.port, handle, a.ready, a.log)


def cmd_tcp_fin_then_reset_server(a):
    """Sends "hello", closes its side (FIN), and a moment later resets the connection."""

    def handle(c):
        try:
            c.sendall(b"hello")
            c.shutdown(socket.SHUT_WR)
            time.sleep(0.3)
            # Linger on, for zero seconds: close() sends a RST instead of waiting.
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError as e:
            print("error", e, flush=True)
        finally:
            c.close()

    serve_tcp(a.addr, a.port, handle, a.ready)


def cmd_tcp_upload_server(a):
    """Reads to EOF, answers with the sha256 (hex) and the byte count."""

    def handle(c):
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

    serve_tcp(a.addr, a.port, handle, a.ready, a.log)


def cmd_tcp_echo_server(a):
    """Echoes everything until EOF, then closes; logs each peer (ADDR:PORT) to --log."""

    def handle(c):
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
            c.shutdown(socket.SHUT_WR)
        except OSError as e:
            print("error", e, flush=True)
        finally:
            c.close()

    serve_tcp(a.addr, a.port, handle, a.ready, a.log)


def client_socket(kind, sport, host="0.0.0.0"):
    s = socket.socket(family(host), kind)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", sport))
    return s


def tcp_connect(a):
    s = client_socket(socket.SOCK_STREAM, getattr(a, "sport", 0), a.host)
    s.settimeout(a.timeout)
    s.connect((a.host, a.port))
    return s


def cmd_tcp_get(a):
    s = tcp_connect(a)
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


def read_to_eof(s):
    """Everything the peer sends until it closes its side."""
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            return out
        out += b


def cmd_tcp_put(a):
    s = tcp_connect(a)
    with open(a.file, "rb") as f:
        s.sendall(f.read())
    s.shutdown(socket.SHUT_WR)
    out = read_to_eof(s)
    s.close()
    print(out.decode().strip())


def cmd_tcp_echo(a):
    """Sends --file while reading the echo back (both ways at once); prints the sha256 (hex)
    and byte count of what came back."""
    s = tcp_connect(a)
    data = open(a.file, "rb").read()
    err = []

    def send():
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    h = hashlib.sha256()
    n = 0
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            h.update(b)
            n += len(b)
    except OSError as e:
        err.append(e)
    t.join(a.timeout)
    s.close()
    if err:
        print("ERROR", err[0], "after", n)
    else:
        print(h.hexdigest(), n)


def wait_file(path, timeout):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def cmd_tcp_session(a):
    """One connection to an echo server, in two rounds: "one", then (after creating --mark)
    waits for the file --go to appear and sends "two". Prints each echo or the error."""
    out = []
    try:
        s = tcp_connect(a)
        for i, msg in enumerate([b"one", b"two"]):
            if i == 1:
                mark_ready(a.mark)
                if not wait_file(a.go, a.timeout):
                    out.append("NOGO")
                    break
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                b = s.recv(len(msg) - len(got))
                if not b:
                    break
                got += b
            out.append(got.decode() or "EOF")
        s.close()
    except socket.timeout:
        out.append("TIMEOUT")
    except OSError as e:
        out.append("ERROR " + errno.errorcode.get(e.errno, str(e.errno)))
    print(" ".join(out))


def cmd_tcp_parallel(a):
    """Opens --count connections at once to an echo server; each sends its own line,
    half-closes and reads to EOF. Prints how many got their own line back, and the
    failures by kind."""
    ok = []
    bad = []
    lock = threading.Lock()
    start = threading.Event()

    def one(i):
        msg = ("conn-%d\n" % i).encode()
        try:
            start.wait()
            s = socket.create_connection((a.host, a.port), timeout=a.timeout)
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                b = s.recv(4096)
                if not b:
                    break
                got += b
            s.close()
            r = "ok" if got == msg else "mismatch"
        except socket.timeout:
            r = "timeout"
        except OSError as e:
            r = errno.errorcode.get(e.errno, str(e.errno))
        with lock:
            (ok if r == "ok" else bad).append(r)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(a.count)]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join(a.timeout + 5)
    kinds = {}
    for r in bad:
        kinds[r] = kinds.get(r, 0) + 1
    print(len(ok), " ".join("%s=%d" % kv for kv in sorted(kinds.items())) or "-")


def cmd_udp_clients(a):
    """--count UDP sockets send "client-I" each (all before any reply is read); prints what
    each got back, in order, space-separated (retries lost datagrams)."""
    socks = []
    for i in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(a.timeout)
        s.connect((a.host, a.port))
        socks.append(s)
    got = [None] * a.count
    for _ in range(a.tries):
        for i, s in enumerate(socks):
            if got[i] is None:
                s.send(("client-%d" % i).encode())
        for i, s in enumerate(socks):
            if got[i] is None:
                try:
                    got[i] = s.recv(65535).decode()
                except socket.timeout:
                    pass
                except OSError as e:
                    got[i] = "ERROR " + errno.errorcode.get(e.errno, str(e.errno))
        if all(g is not None for g in got):
            break
    print(" ".join(g if g is not None else "TIMEOUT" for g in got))


# --- the API socket ---------------------------------------------------------------------------

def cmd_api(a):
    """Sends one request (--pad: padded with spaces to that many bytes) to the API socket,
    half-closes, and prints the reply with newlines shown as \\n (the protocol has none).
    --once reads a single time, at most 2048 bytes, as Podman does; otherwise it reads to
    EOF, as RootlessKit does (a reset after the reply counts as the end). --get PATH prints
    one field of the JSON reply instead (dotted, list indices as numbers)."""
    req = a.request.encode()
    req += b" " * max(0, a.pad - len(req))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(a.timeout)
    try:
        s.connect(a.socket)
        try:
            s.sendall(req)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if a.once:
            reply = s.recv(2048)
        else:
            reply = b""
            while True:
                try:
                    b = s.recv(65536)
                except ConnectionResetError:
                    if reply:
                        break
                    raise
                if not b:
                    break
                reply += b
    except socket.timeout:
        print("TIMEOUT")
        return
    except OSError as e:
        print("ERROR", errno.errorcode.get(e.errno, str(e.errno)))
        return
    finally:
        s.close()
    text = reply.decode("utf-8", "replace")
    if a.get:
        try:
            v = json.loads(text)
            for key in a.get.split("."):
                v = v[int(key)] if isinstance(v, list) else v[key]
            print(v)
        except (ValueError, KeyError, IndexError, TypeError):
            print("NOFIELD", text.replace("\n", "\\n"))
        return
    print(text.replace("\n", "\\n") if text else "EMPTY")


def cmd_api_hold(a):
    """Connects to the API socket and sends nothing for --seconds (an idle client); then
    prints what the server did meanwhile: CLOSED (EOF came), or HELD."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(a.seconds)
    s.connect(a.socket)
    mark_ready(a.ready)
    try:
        b = s.recv(4096)
        print("CLOSED" if not b else "DATA " + b.decode("utf-8", "replace"), flush=True)
    except socket.timeout:
        print("HELD", flush=True)
    except OSError as e:
        print("ERROR", errno.errorcode.get(e.errno, str(e.errno)), flush=True)
    s.close()


def cmd_udp_echo_server(a):
    s = socket.socket(family(a.addr), socket.SOCK_DGRAM)
    s.bind((a.addr, a.port))
    mark_ready(a.ready)
    while True:
        data, peer = s.recvfrom(65535)
        print("got", len(data), "from", peer, flush=True)
        if a.log:
            with open(a.log, "a") as f:
                f.write("%s %d\n" % (peer_text(peer), len(data)))
        s.sendto(b"echo:" + data, peer)


def cmd_udp_echo(a):
    """Sends a datagram, prints the reply; retries a few times (UDP may lose the first one
    while ARP resolves)."""
    s = client_socket(socket.SOCK_DGRAM, a.sport, a.host)
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


def cmd_tcp_wait_reset(a):
    """Reads to EOF, then waits without sending for the connection to be torn down (POLLHUP
    or POLLERR: the peer reset it). Prints RESET and the seconds from EOF to it, or OPEN."""
    s = tcp_connect(a)
    data = read_to_eof(s)
    eof = time.monotonic()
    p = select.poll()
    p.register(s, select.POLLIN | select.POLLERR | select.POLLHUP)
    while time.monotonic() - eof < a.timeout:
        for _, ev in p.poll(50):
            if ev & (select.POLLHUP | select.POLLERR):
                print("RESET", "%.3f" % (time.monotonic() - eof), data.decode())
                return
        time.sleep(0.02)
    print("OPEN", "%.3f" % (time.monotonic() - eof), data.decode())


def cmd_connect_probe(a):
    """Tries a TCP connect; prints OK or the errno name, and the elapsed seconds."""
    s = socket.socket(family(a.host), socket.SOCK_STREAM)
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
            s = socket.socket(family(a.server), socket.SOCK_DGRAM)
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

    dl = server("tcp-download-server", cmd_tcp_download_server)
    dl.add_argument("--file", required=True)
    dl.add_argument("--log")
    server("tcp-upload-server", cmd_tcp_upload_server).add_argument("--log")
    server("tcp-echo-server", cmd_tcp_echo_server).add_argument("--log")
    server("tcp-fin-then-reset-server", cmd_tcp_fin_then_reset_server)
    server("udp-echo-server", cmd_udp_echo_server).add_argument("--log")
    server("dns-server", cmd_dns_server).add_argument("--record", action="append", default=[])

    def client(name, fn):
        sp = sub.add_parser(name)
        sp.add_argument("host")
        sp.add_argument("port", type=int)
        sp.add_argument("--timeout", type=float, default=10)
        sp.set_defaults(fn=fn)
        return sp

    client("tcp-get", cmd_tcp_get).add_argument("--sport", type=int, default=0)
    tp = client("tcp-put", cmd_tcp_put)
    tp.add_argument("--file", required=True)
    tp.add_argument("--sport", type=int, default=0)
    client("tcp-echo", cmd_tcp_echo).add_argument("--file", required=True)
    ts = client("tcp-session", cmd_tcp_session)
    ts.add_argument("--mark", required=True)
    ts.add_argument("--go", required=True)
    client("tcp-parallel", cmd_tcp_parallel).add_argument("--count", type=int, default=200)
    u = client("udp-echo", cmd_udp_echo)
    u.add_argument("--message", default="hello")
    u.add_argument("--tries", type=int, default=5)
    u.add_argument("--sport", type=int, default=0)
    u.set_defaults(timeout=1.0)
    uc = client("udp-clients", cmd_udp_clients)
    uc.add_argument("--count", type=int, default=2)
    uc.add_argument("--tries", type=int, default=5)
    uc.set_defaults(timeout=1.0)
    client("connect-probe", cmd_connect_probe)
    client("tcp-wait-reset", cmd_tcp_wait_reset)

    ap = sub.add_parser("api")
    ap.add_argument("socket")
    ap.add_argument("request")
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--pad", type=int, default=0, help="pad with spaces to this length")
    ap.add_argument("--get")
    ap.add_argument("--timeout", type=float, default=5)
    ap.set_defaults(fn=cmd_api)
    ah = sub.add_parser("api-hold")
    ah.add_argument("socket")
    ah.add_argument("--seconds", type=float, default=20)
    ah.add_argument("--ready")
    ah.set_defaults(fn=cmd_api_hold)

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
