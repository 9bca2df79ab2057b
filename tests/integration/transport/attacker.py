# A hostile host on the imaging LAN, for the tests: records a session's datagrams, then replays
# them into a later session and forges data and control datagrams for the live one.
# Runs with /usr/bin/python3 inside its own lab namespace; prints a JSON summary of what it sent.
import argparse
import json
import os
import socket
import struct
import time

DATAGRAM = 1472


def group_socket(group, port, address):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((group, port))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(address))
    sock.settimeout(0.2)
    return sock


def out_socket(address):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)   # never sniff our own
    return sock


def record(args):
    sock = group_socket(args.group, args.port, args.address)
    kept, deadline = [], time.monotonic() + args.seconds
    while time.monotonic() < deadline and len(kept) < 20000:
        try:
            kept.append(sock.recv(65536)[:DATAGRAM])
        except socket.timeout:
            continue
    with open(args.file, "wb") as out:
        for datagram in kept:
            out.write(struct.pack(">H", len(datagram)) + datagram)
    print(json.dumps({"recorded": len(kept)}), flush=True)


def inject(args):
    old = []
    with open(args.file, "rb") as source:
        blob = source.read()
    offset = 0
    while offset < len(blob):
        (size,) = struct.unpack_from(">H", blob, offset)
        old.append(blob[offset + 2:offset + 2 + size])
        offset += 2 + size
    sniff = group_socket(args.group, args.port, args.address)
    sniff.setsockopt(17, 104, 0)
    out = out_socket(args.address)
    counts = {"replayed_old": 0, "forged_data": 0, "forged_control": 0, "replayed_current": 0}
    captured_control = []
    old_sessions = {stale[4:12] for stale in old}
    senders = set()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        try:
            datagram, source = sniff.recvfrom(65536)
        except socket.timeout:
            continue
        if datagram[4:12] in old_sessions:
            continue                      # the old session: only replayed, never forged from
        senders.add(source)
        if len(datagram) == DATAGRAM and datagram[0] == 1:
            if counts["forged_data"] < args.forgeries:
                # the same object and fragment, right behind the real one, with other bytes
                out.sendto(datagram[:24] + os.urandom(DATAGRAM - 24), (args.group, args.port))
                counts["forged_data"] += 1
        elif len(datagram) < 1400:
            captured_control.append(datagram)
            session = datagram[4:12]
            for kind in (2, 3, 5):       # announce, meta, end with a forged tag
                head = struct.pack(">BBH", kind, 1, 0) + session + struct.pack(">Q", 2 ** 40 + counts["forged_control"])
                out.sendto(head + os.urandom(48) + os.urandom(16), (args.group, args.port))
                counts["forged_control"] += 1
            for kind in (16, 17, 18):    # join, status, done to the sender, forged tag
                head = struct.pack(">BBH", kind, 1, 0) + session + struct.pack(">Q", 7)
                out.sendto(head + os.urandom(60), source)
                counts["forged_control"] += 1
        if old and counts["replayed_old"] < 4 * len(old):
            for stale in old[counts["replayed_old"] % len(old):][:20]:
                out.sendto(stale, (args.group, args.port))
                counts["replayed_old"] += 1
        if len(captured_control) > 5:
            # genuine control datagrams of this very session, sent again
            for replay in captured_control[:3]:
                out.sendto(replay, (args.group, args.port))
                counts["replayed_current"] += 1
            del captured_control[:3]
    print(json.dumps(counts), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["record", "inject"])
    parser.add_argument("--group", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--forgeries", type=int, default=400)
    args = parser.parse_args()
    record(args) if args.mode == "record" else inject(args)


if __name__ == "__main__":
    main()
