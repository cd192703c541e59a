"""A tiny OpenAI audio server for scripts/e2e.sh (Python stdlib only, loopback only).

Usage: python3 audio_server.py RECORD_FILE
  Listens on 127.0.0.1 on a free port and prints the port on stdout.
  POST /v1/audio/transcriptions  reads the multipart form (model, file) and answers
                                 {"text": "heard N bytes of FILENAME with MODEL"}.
                                 Appends one JSON line per request to RECORD_FILE:
                                 {"path", "model", "bytes", "authorization"}.
"""
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

record_file = sys.argv[1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_POST(self):
        body = self.read_body()
        if not self.path.startswith("/v1/audio/transcriptions"):
            self.send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        boundary = re.search(r'boundary="?([^";]+)"?', self.headers["Content-Type"]).group(1)
        fields, size, name = {}, 0, ""
        for part in body.split(b"--" + boundary.encode())[1:-1]:
            head, _, value = part.partition(b"\r\n\r\n")
            value = value[:-2]  # the CRLF before the next delimiter
            field = re.search(rb'name="([^"]+)"', head).group(1).decode()
            filename = re.search(rb'filename="([^"]*)"', head)
            if filename:
                size, name = len(value), filename.group(1).decode()
            else:
                fields[field] = value.decode()
        with open(record_file, "a") as f:
            f.write(json.dumps({"path": self.path, "model": fields.get("model"), "bytes": size,
                                "authorization": self.headers.get("Authorization")}) + "\n")
        self.send_json(200, {"text": f"heard {size} bytes of {name} with {fields.get('model')}"})

    def send_json(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
