#!/usr/bin/env python3
"""Prints an xds_requests fuzz input as the requests it stands for.

    python3 fuzz/show_xds_input.py fuzz/artifacts/xds_requests/crash-...
"""

import sys

KINDS = ["ADS", "CDS", "EDS", "LDS", "RDS"]
FLAGS = {1: "switch bundle", 2: "delete bundle", 4: "latest nonce"}
FIELDS = {1: "version_info", 2: "node", 3: "resource_names", 4: "type_url", 5: "response_nonce", 6: "error_detail"}


def varint(data, at):
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def fields(data):
    """(number, value) pairs of a message; raises ValueError where prost would refuse it."""
    at = 0
    while at < len(data):
        key, at = varint(data, at)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field 0")
        if wire == 0:
            value, at = varint(data, at)
        elif wire == 2:
            length, at = varint(data, at)
            if at + length > len(data):
                raise ValueError("truncated field")
            value, at = data[at:at + length], at + length
        elif wire == 1:
            value, at = data[at:at + 8], at + 8
        elif wire == 5:
            value, at = data[at:at + 4], at + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, value


def show(data):
    print("stream:", KINDS[data[0] % 5])
    rest = data[1:]
    while len(rest) >= 3:
        flags, length = rest[0], int.from_bytes(rest[1:3], "little")
        message, rest = rest[3:3 + length], rest[3 + length:]
        named = [name for bit, name in FLAGS.items() if flags & bit]
        try:
            parts = []
            for number, value in fields(message):
                name = FIELDS.get(number, f"#{number}")
                if number == 4:
                    value = value.decode(errors="replace").rsplit(".", 1)[-1]
                elif isinstance(value, bytes):
                    value = value.decode(errors="replace")
                parts.append(f"{name}={value!r}")
            print(f"  [{', '.join(named)}]", " ".join(parts) or "(empty request)")
        except ValueError as e:
            print(f"  [{', '.join(named)}] undecodable: {e}")


if __name__ == "__main__":
    show(open(sys.argv[1], "rb").read())
