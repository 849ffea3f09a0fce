"""A stdlib-only HTTP + WebSocket echo server for sandboxes (no pip inside the image).

python3 wsecho.py PORT DIR: serves DIR's files; /ws upgrades and echoes text frames back;
/sse sends three events 0.3 s apart; /big?n=BYTES streams n zero bytes, /big?n=BYTES&seed=S
n pseudo-random ones (`random_block(S, i)` for the i-th MiB, so a test can check them); POST
/upload answers the byte count and the SHA-256 of its body.
"""

import base64
import hashlib
import http.server
import os
import socketserver
import struct
import sys
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/ws":
            return self.websocket()
        if self.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                data = f"data: tick {i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/big?n="):
            query = dict(p.split("=", 1) for p in self.path.split("?", 1)[1].split("&"))
            n, seed = int(query["n"]), query.get("seed")
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            zeros, i = bytes(1 << 20), 0
            while n > 0:
                block = zeros if seed is None else random_block(seed, i)
                self.wfile.write(block[: min(n, len(block))])
                n -= min(n, len(block))
                i += 1
            return
        return super().do_GET()

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        got, digest = 0, hashlib.sha256()
        while got < n:
            chunk = self.rfile.read(min(1 << 20, n - got))
            if not chunk:
                break
            got += len(chunk)
            digest.update(chunk)
        body = f"{got} {digest.hexdigest()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                self.wfile.write(b"\x88\x00")
                return
            if opcode == 1:
                reply = b"echo:" + data
                n = len(reply)
                header = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + struct.pack("!H", n)
                self.wfile.write(header + reply)
                self.wfile.flush()


def random_block(seed, i):
    """The i-th MiB of the /big stream for `seed`: random-looking, and the same on the host."""
    return hashlib.shake_256(f"{seed}:{i}".encode()).digest(1 << 20)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    os.chdir(sys.argv[2])
    Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
