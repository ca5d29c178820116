#!/usr/bin/env python3
"""Writes the inner_checksum seeds: inner frames from the kernel vxlan capture
src/wire/testdata/v4-udpcsum.pcap (TCP SYN, SYN-ACK, data, FIN; UDP), each as captured (a
finished checksum) and with the checksum field replaced by the pseudo-header residue a
CHECKSUM_PARTIAL sender leaves; and the same segments re-framed in IPv6 (fd00::1 -> fd00::2).

    make_inner_checksum_seeds.py   (from dataplane/fuzz)
"""
import os
import struct

PCAP = "../src/wire/testdata/v4-udpcsum.pcap"
OUT = "seeds/inner_checksum"
FRAMES = {15: "tcp-syn", 16: "tcp-synack", 18: "tcp-data", 22: "tcp-fin", 26: "udp"}


def frames(path):
    data = open(path, "rb").read()
    endian = "<" if struct.unpack("<I", data[:4])[0] in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "IIII", data[off:off + 16])[2]
        yield data[off + 16:off + 16 + incl]
        off += 16 + incl


def fold(s):
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def words(b):
    b = b + b"\0" * (len(b) % 2)
    return sum(struct.unpack(">%dH" % (len(b) // 2), b))


def with_field(frame, at, value):
    return frame[:at] + struct.pack(">H", value) + frame[at + 2:]


def write(name, frame):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(frame)


def main():
    os.makedirs(OUT, exist_ok=True)
    fs = list(frames(PCAP))
    for index, name in FRAMES.items():
        inner = fs[index][50:]  # outer Ethernet, IPv4, UDP, VXLAN
        ip = inner[14:]
        hl = (ip[0] & 0x0F) * 4
        proto = ip[9]
        l4 = ip[hl:struct.unpack(">H", ip[2:4])[0]]
        field = 16 if proto == 6 else 6
        pseudo4 = fold(words(ip[12:20]) + proto + len(l4))
        write(f"v4-{name}", inner)
        write(f"v4-{name}-partial", with_field(inner, 14 + hl + field, pseudo4))

        src6 = bytes.fromhex("fd000000000000000000000000000001")
        dst6 = bytes.fromhex("fd000000000000000000000000000002")
        l4z = with_field(l4, field, 0)
        pseudo6 = fold(words(src6 + dst6) + len(l4) + proto)
        full6 = (~fold(pseudo6 + words(l4z))) & 0xFFFF
        hdr6 = struct.pack(">IHBB", 6 << 28, len(l4), proto, 64) + src6 + dst6
        eth6 = inner[:12] + b"\x86\xdd"
        write(f"v6-{name}", eth6 + hdr6 + with_field(l4, field, full6))
        write(f"v6-{name}-partial", eth6 + hdr6 + with_field(l4, field, pseudo6))


main()
