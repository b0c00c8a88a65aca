"""A minimal NBD client on a raw socket, for the end-to-end tests: the fixed
newstyle handshake, OPT_GO, then whatever the test sends. Unlike libnbd it
sees every byte the server sends, also after its own sends have failed."""
import socket
import struct

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3


class RawClient:
    def __init__(self, sock, export):
        """Negotiates `export` (str) on the connected socket `sock`."""
        self.s = sock
        magic, opt, hflags = struct.unpack(">QQH", self.recv(18))
        assert magic == NBDMAGIC and opt == IHAVEOPT and hflags & 1, "not a fixed newstyle server"
        self.s.sendall(struct.pack(">I", 3 if hflags & 2 else 1))  # FIXED_NEWSTYLE (+ NO_ZEROES)
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
        while True:
            _, _, rtype, length = struct.unpack(">QIII", self.recv(20))
            self.recv(length)
            if rtype == REP_ACK:
                break
            assert rtype == REP_INFO, f"OPT_GO: reply {rtype:#x}"

    @classmethod
    def unix(cls, path, export):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return cls(s, export)

    @classmethod
    def tcp(cls, host, port, export):
        return cls(socket.create_connection((host, port)), export)

    def recv(self, n):
        """Exactly n bytes; EOFError if the stream ends first."""
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf
