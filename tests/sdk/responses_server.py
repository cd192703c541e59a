"""A tiny Responses-API server for scripts/e2e.sh (Python stdlib only, loopback only).

Usage: python3 responses_server.py RECORD_FILE
  Listens on 127.0.0.1 on a free port and prints the port on stdout.
  POST /v1/responses   fixed answer "from the responses server": JSON, or SSE when
                       the request says "stream": true; appends one JSON line per
                       request to RECORD_FILE: {"model", "stream", "instructions"}
  GET /prompts/NAME    a prompt server: the text prompt_text(NAME)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEXT = "from the responses server"
USAGE = {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}


def prompt_text(name):
    return f"E2E PROMPT {name}: answer the openai SDK check.\n"


def response_object(model):
    return {
        "id": "resp_e2e", "object": "response", "created_at": 1, "status": "completed",
        "model": model, "usage": USAGE,
        "output": [{"type": "message", "id": "msg_e2e", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": TEXT, "annotations": []}]}],
    }


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.startswith("/prompts/"):
            self.send_error(404)
            return
        body = prompt_text(self.path[len("/prompts/"):]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/markdown; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path != "/v1/responses":
            self.send_error(404)
            return
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with open(sys.argv[1], "a") as record:
            record.write(json.dumps({"model": request.get("model"), "stream": request.get("stream", False),
                                     "instructions": request.get("instructions")}) + "\n")
        whole = response_object(request.get("model"))
        if not request.get("stream"):
            body = json.dumps(whole).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes

        def event(data):
            self.wfile.write(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        event({"type": "response.created", "response": {"id": "resp_e2e", "status": "in_progress"}})
        event({"type": "response.output_item.added", "output_index": 0,
               "item": {"type": "message", "id": "msg_e2e", "role": "assistant", "content": []}})
        for piece in ("from", " the", " responses", " server"):
            event({"type": "response.output_text.delta", "item_id": "msg_e2e", "output_index": 0,
                   "content_index": 0, "delta": piece})
        event({"type": "response.completed", "response": whole})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
