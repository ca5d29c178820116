#!/usr/bin/env python3
"""Lists the frames of a pcap, or prints chosen ones as Rust byte-array consts.

    pcap2rust.py FILE                  list frames (index, length, first bytes)
    pcap2rust.py FILE INDEX NAME ...   print `const NAME: [u8; N] = [...];` for each pair
    pcap2rust.py FILE --raw INDEX OUT  write one frame's bytes to OUT (fuzz seeds)
"""
import struct
import sys


def frames(path):
    data = open(path, "rb").read()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        yield data[off:off + incl]
        off += incl


def rust(name, frame):
    lines = [f"const {name}: [u8; {len(frame)}] = ["]
    for i in range(0, len(frame), 16):
        lines.append("    " + " ".join(f"0x{b:02x}," for b in frame[i:i + 16]))
    lines.append("];")
    return "\n".join(lines)


def main():
    path, rest = sys.argv[1], sys.argv[2:]
    fs = list(frames(path))
    if not rest:
        for i, f in enumerate(fs):
            print(i, len(f), f[:14].hex(), f[14:60].hex())
    elif rest[0] == "--raw":
        open(rest[2], "wb").write(fs[int(rest[1])])
    else:
        for idx, name in zip(rest[::2], rest[1::2]):
            print(rust(name, fs[int(idx)]))


main()
