"""A STUN Binding request made and read by aioice (a STUN implementation nobody here wrote).

Usage: stun_aioice.py HOST PORT [fingerprint] [priority]
Prints "LOCAL MAPPED" for a success, "420 TYPES" (hex, comma-separated) for a 420.
"""

import socket
import struct
import sys

from aioice import stun


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    flags = set(sys.argv[3:])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.bind((host, 0))
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    if "priority" in flags:
        # An ICE attribute a plain STUN server does not understand (comprehension-required).
        request.attributes["PRIORITY"] = 1
    if "fingerprint" in flags:
        request.add_fingerprint()
    sock.sendto(bytes(request), (host, port))
    data = sock.recv(2048)
    response = stun.parse_message(data)
    assert response.transaction_id == request.transaction_id, "transaction id"
    assert response.message_method == stun.Method.BINDING, response.message_method
    if "fingerprint" in flags:
        assert "FINGERPRINT" in response.attributes, "no FINGERPRINT in the answer"
    local = sock.getsockname()
    if response.message_class == stun.Class.RESPONSE:
        ip, mapped_port = response.attributes["XOR-MAPPED-ADDRESS"]
        print(fmt(local[0], local[1]), fmt(ip, mapped_port))
        return
    assert response.message_class == stun.Class.ERROR, response.message_class
    code, _reason = response.attributes["ERROR-CODE"]
    # aioice does not decode UNKNOWN-ATTRIBUTES (0x000A): read it from the bytes.
    at, types = 20, []
    while at + 4 <= len(data):
        kind, length = struct.unpack("!HH", data[at : at + 4])
        if kind == 0x000A:
            value = data[at + 4 : at + 4 + length]
            types = [f"{t:04x}" for (t,) in struct.iter_unpack("!H", value)]
        at += 4 + length + (-length % 4)
    print(code, ",".join(types))


def fmt(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


if __name__ == "__main__":
    main()
