"""The floor: a minimal Python echo over the inherited socket on fd 3.

Frame: u32 little-endian payload length, then the payload. No decoding,
no dispatch: what any C++→Python call over a socketpair must pay at least.
"""

import socket
import struct

LEN = struct.Struct("<I")


def main() -> None:
    sock = socket.socket(fileno=3)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        got = 0
        while got < 4:
            n = sock.recv_into(view[got:4])
            if n == 0:
                return
            got += n
        (size,) = LEN.unpack_from(buf)
        if size + 4 > len(buf):
            buf = bytearray(size + 4)
            view = memoryview(buf)
            LEN.pack_into(buf, 0, size)
        got = 0
        while got < size:
            n = sock.recv_into(view[4 + got:4 + size])
            if n == 0:
                return
            got += n
        sock.sendall(view[:4 + size])


main()
