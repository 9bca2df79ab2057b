# A hostile host on the imaging LAN, for the tests and the benchmark: it listens to a live session
# (data, announcements and the receivers' reports), then sends mutated copies of what it heard,
# kind by kind, round-robin. Runs with /usr/bin/python3 (and numpy) inside its own lab namespace,
# from its genuine address (with its own or the sender's Ethernet address, as the test set up its
# interface) or, with --source, from the sender's IP address; prints a JSON summary of what it sent.
#
# Kinds (each --per-kind datagrams):
#   bits     1-3 random bits flipped in the first 32 bytes of a live data datagram (the header)
#   fields   one header field (type+version, flags, session, object, fragment, count, tag) random
#   payload  a live header (tag included) with other payload bytes
#   future   objects past the session's end, with absurd fragment counts (0, 1, 2^32-1, random)
#   flood    random datagrams of the data size behind the live session's prefix
#   lengths  live data datagrams cut short (0 bytes up to one byte less than the data size) or made
#            longer (up to 65507 bytes: IP fragments), one at a time, and GSO sends whose segment
#            size is not the data size (the receivers' GRO hands them buffers of that size)
#   control  captured control datagrams and receivers' reports with random bits flipped, sent to
#            the group, to the sender and to the report port
# Data kinds go out in GSO sends of 44 datagrams (cheap for us; the receivers take them in their
# vectorised path) and every 16th batch one datagram at a time (their per-datagram path).
import argparse
import json
import resource
import socket
import subprocess
import time

import numpy as np

DATAGRAM = 1472
SEGMENTS = 44
ROUND = 8                    # GSO sends per kind and round
SINGLES_EVERY = 16           # every 16th send goes out one datagram at a time
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
FIELDS = [(0, 2), (2, 4), (4, 12), (12, 16), (16, 20), (20, 24), (24, 32)]
DATA_KINDS = ["bits", "fields", "payload", "future", "flood", "lengths"]


def listening(group, port, address):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((group, port))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(address))
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 0)          # no GRO: whole datagrams, one by one
    except OSError:
        pass
    sock.setblocking(False)
    return sock


def sending(address):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    return sock


def listen(socks, templates, controls, reports, seconds, enough):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (len(templates) >= enough and controls and reports):
        for sock in socks:
            while True:
                try:
                    datagram, source = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                if len(datagram) == DATAGRAM and datagram[0] == 1:
                    if len(templates) < 4 * enough:
                        templates.append(datagram)
                elif len(datagram) < 1400:
                    (reports if sock is socks[1] else controls).append((datagram, source))
        time.sleep(0.002)


def mutate(kind, rows, rng, session_end):
    count = rows.shape[0]
    every = np.arange(count)
    if kind == "bits":
        for dummy in range(3):
            position = rng.integers(0, 32 * 8, count)
            chosen = rng.random(count) < 0.67
            rows[every[chosen], position[chosen] // 8] ^= (1 << (position[chosen] % 8)).astype(np.uint8)
        position = rng.integers(0, 32 * 8, count)               # at least one bit always
        rows[every, position // 8] ^= (1 << (position % 8)).astype(np.uint8)
    elif kind == "fields":
        which = rng.integers(0, len(FIELDS), count)
        for number, (start, end) in enumerate(FIELDS):
            chosen = which == number
            rows[chosen, start:end] = rng.integers(0, 256, (int(chosen.sum()), end - start), dtype=np.uint8)
    elif kind == "payload":
        rows[:, 32:] = rng.integers(0, 256, (count, DATAGRAM - 32), dtype=np.uint8)
    elif kind == "future":
        # half just past what was sent (inside the receivers' bounds: the tag must catch them),
        # half far beyond the session's end
        near = rng.random(count) < 0.5
        objects = np.where(near, session_end + rng.integers(0, 64, count, dtype=np.uint64),
                           session_end + 100000 + rng.integers(0, 1 << 20, count, dtype=np.uint64))
        counts = rng.choice(np.array([0, 1, 0xFFFFFFFF, 46000, 46341, 7], dtype=np.uint64), count)
        random_counts = rng.random(count) < 0.3
        counts[random_counts] = rng.integers(0, 1 << 32, int(random_counts.sum()), dtype=np.uint64)
        fragments = rng.integers(0, 1 << 16, count, dtype=np.uint64)
        rows[:, 12:16] = objects.astype(">u4").view(np.uint8).reshape(count, 4)
        rows[:, 16:20] = fragments.astype(">u4").view(np.uint8).reshape(count, 4)
        rows[:, 20:24] = counts.astype(">u4").view(np.uint8).reshape(count, 4)
    elif kind == "flood":
        rows[:, 12:] = rng.integers(0, 256, (count, DATAGRAM - 12), dtype=np.uint8)
    return rows


def send_other_lengths(rows, rng, out, gso, group):
    """Live datagrams at other lengths; returns how many went out."""
    sent = 0
    singles, batched = rows[:len(rows) // 2], rows[len(rows) // 2:]
    for row in singles:
        pick = rng.random()
        if pick < 0.2:
            length = int(rng.integers(0, 40))                        # not even a whole header
        elif pick < 0.6:
            length = int(rng.integers(40, DATAGRAM))
        elif pick < 0.95:
            length = int(rng.integers(DATAGRAM + 1, 9000))
        else:
            length = int(rng.integers(9000, 65508))
        datagram = row.tobytes()[:length] + rng.bytes(max(0, length - DATAGRAM))
        try:
            out.sendto(datagram, group)
            sent += 1
        except OSError:
            time.sleep(0.001)
    if gso is not None:
        for start in range(0, len(batched), SEGMENTS):
            segment = int(rng.integers(33, DATAGRAM))
            part = batched[start:start + SEGMENTS, :segment]
            try:
                gso.setsockopt(SOL_UDP, UDP_SEGMENT, segment)
                gso.sendto(part.tobytes(), group)
                sent += len(part)
            except OSError:
                time.sleep(0.001)
        gso.setsockopt(SOL_UDP, UDP_SEGMENT, DATAGRAM)       # the other data kinds' size again
    return sent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--sender", required=True, help="the sender's address (its reports go there)")
    parser.add_argument("--source", help="send from this address (the sender's: it is added to eth0 once the "
                        "session was heard, since the kernel drops what arrives from its own addresses)")
    parser.add_argument("--per-kind", type=int, default=100000)
    parser.add_argument("--kinds", default=",".join(DATA_KINDS + ["control"]))
    parser.add_argument("--rate", type=float, default=0, help="bytes per second of forgeries, 0: as fast as we can")
    parser.add_argument("--seconds", type=float, default=120, help="give up after this long")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    kinds = args.kinds.split(",")
    socks = [listening(args.group, args.port, args.address), listening(args.group, args.port + 1, args.address)]
    templates, controls, reports = [], [], []
    started = time.monotonic()
    listen(socks, templates, controls, reports, 20, 256)
    if not templates:
        print(json.dumps({"error": "heard no session"}), flush=True)
        return
    session = templates[0][4:12]
    live = [t for t in templates if t[4:12] == session]
    base = np.frombuffer(b"".join(live), dtype=np.uint8).reshape(-1, DATAGRAM)
    highest = int(base[:, 12:16].copy().view(">u4").max())
    if args.source:
        # from now on this host also answers ARP for the sender's address
        subprocess.run(["ip", "addr", "add", args.source + "/32", "dev", "eth0"], check=True)
    out = sending(args.source or args.address)
    gso = sending(args.source or args.address)
    try:
        gso.setsockopt(SOL_UDP, UDP_SEGMENT, DATAGRAM)
    except OSError:
        gso = None
    group = (args.group, args.port)
    targets = [group, (args.sender, args.port), (args.group, args.port + 1)]
    sent = {kind: 0 for kind in kinds}
    batch = 0
    pace = time.monotonic()
    while any(sent[kind] < args.per_kind for kind in kinds) and time.monotonic() - started < args.seconds:
        for kind in kinds:
            if sent[kind] >= args.per_kind:
                continue
            if kind == "control":
                captured = controls + reports
                if not captured:
                    listen(socks, templates, controls, reports, 0.05, 0)
                    continue
                for dummy in range(SEGMENTS * ROUND):
                    datagram, dummy_source = captured[int(rng.integers(len(captured)))]
                    forged = bytearray(datagram)
                    for flip in rng.integers(0, len(forged) * 8, int(rng.integers(1, 4))):
                        forged[flip // 8] ^= 1 << (flip % 8)
                    try:
                        out.sendto(bytes(forged), targets[sent[kind] % 3])
                    except OSError:
                        pass
                    sent[kind] += 1
                continue
            picked = base[rng.integers(0, len(base), SEGMENTS * ROUND)]      # a copy already
            if kind == "lengths":
                sent[kind] += send_other_lengths(picked, rng, out, gso, group)
                continue
            rows = mutate(kind, picked, rng, highest + 1)
            for start in range(0, len(rows), SEGMENTS):
                batch += 1
                part = rows[start:start + SEGMENTS]
                try:
                    if gso is not None and batch % SINGLES_EVERY:
                        gso.sendto(part.tobytes(), group)
                    else:
                        for row in part:
                            out.sendto(row.tobytes(), group)
                except OSError:
                    time.sleep(0.001)                 # socket buffer full: our own problem
            sent[kind] += len(rows)
            if args.rate:
                pace += len(rows) * DATAGRAM / args.rate
                delay = pace - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    pace = time.monotonic()
        if batch % 256 < 8:
            listen(socks, templates, controls, reports, 0, 0)   # keep the captures fresh-ish
    summary = dict(sent)
    summary["seconds"] = round(time.monotonic() - started, 3)
    summary["templates"] = len(base)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 3)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
