"""A tiny Anthropic Messages API server for scripts/e2e.sh (Python stdlib only, loopback only).

Usage: python3 anthropic_server.py RECORD_FILE
  Listens on 127.0.0.1 on a free port and prints the port on stdout.
  POST /v1/messages   answers "from the anthropic server": a Messages object, or the full
                      event sequence (message_start, ping, content blocks, message_delta,
                      message_stop) when the request says "stream": true. It refuses (400,
                      in Anthropic's error shape) what the real API refuses: no max_tokens,
                      roles that do not alternate, a tool_result without its tool_use.
                      Appends one JSON line per request to RECORD_FILE: {"model", "stream",
                      "system", "headers", "roles", "tool_result"}.
                      Tool round trip (Codex CLI): when the request offers a shell-like tool
                      (exec_command, shell_command or shell) and its last user turn has no
                      tool_result, the answer is a tool_use of that tool running
                      `echo warden-e2e-tool`; once the result comes back, the answer is the
                      text "tool said: RESULT".
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEXT = "from the anthropic server"
TOOL_INPUT = {
    "exec_command": {"cmd": "echo warden-e2e-tool"},
    "shell_command": {"command": "echo warden-e2e-tool"},
    "shell": {"command": ["echo", "warden-e2e-tool"]},
}


def block_text(content):
    if isinstance(content, str):
        return content
    return " ".join(b.get("text", "") for b in content or [] if isinstance(b, dict))


def problem(request):
    """What the real Messages API would refuse in this request, or None."""
    if not isinstance(request.get("max_tokens"), int):
        return "max_tokens: Field required"
    roles = [m.get("role") for m in request.get("messages", [])]
    if not roles or roles[0] != "user" or any(a == b for a, b in zip(roles, roles[1:])):
        return f"messages: roles must alternate, starting with user: {roles}"
    used = set()
    for m in request["messages"]:
        for b in m["content"] if isinstance(m["content"], list) else []:
            if b.get("type") == "tool_use":
                used.add(b.get("id"))
            if b.get("type") == "tool_result" and b.get("tool_use_id") not in used:
                return f"tool_result for unknown tool_use_id {b.get('tool_use_id')}"
    return None


def answer(request):
    """The content blocks and stop_reason, and the tool result seen (or None)."""
    last = request["messages"][-1]
    blocks = last["content"] if isinstance(last["content"], list) else []
    results = [b for b in blocks if b.get("type") == "tool_result"]
    if results:
        result = block_text(results[-1].get("content"))
        return [{"type": "text", "text": f"tool said: {result}"}], "end_turn", result
    names = [t.get("name") for t in request.get("tools") or []]
    for name, tool_input in TOOL_INPUT.items():
        if name in names:
            block = {"type": "tool_use", "id": "toolu_e2e", "name": name, "input": tool_input}
            return [block], "tool_use", None
    return [{"type": "text", "text": TEXT}], "end_turn", None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path.rstrip("/") != "/v1/messages":
            self.send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
            return
        refused = problem(request)
        if refused:
            print(f"anthropic server refused: {refused}", file=sys.stderr)
            self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": refused}})
            return
        content, stop_reason, result = answer(request)
        stream = request.get("stream") is True
        with open(sys.argv[1], "a") as record:
            record.write(json.dumps({
                "model": request.get("model"), "stream": stream, "system": request.get("system"),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "roles": [m["role"] for m in request["messages"]], "tool_result": result,
            }) + "\n")
        usage = {"input_tokens": 11, "output_tokens": 5}
        message = {"id": "msg_e2e", "type": "message", "role": "assistant", "model": request.get("model"),
                   "content": content, "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}
        if not stream:
            self.send_json(200, message)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def event(data):
            self.wfile.write(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        event({"type": "message_start", "message": dict(message, content=[], stop_reason=None,
                                                         usage={"input_tokens": 11, "output_tokens": 1})})
        event({"type": "ping"})
        for i, block in enumerate(content):
            if block["type"] == "text":
                event({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
                for word in block["text"].split(" "):
                    piece = word if word == block["text"].split(" ")[0] else " " + word
                    event({"type": "content_block_delta", "index": i,
                           "delta": {"type": "text_delta", "text": piece}})
            else:
                event({"type": "content_block_start", "index": i,
                       "content_block": dict(block, input={})})
                partial = json.dumps(block["input"])
                half = len(partial) // 2
                for piece in (partial[:half], partial[half:]):
                    event({"type": "content_block_delta", "index": i,
                           "delta": {"type": "input_json_delta", "partial_json": piece}})
            event({"type": "content_block_stop", "index": i})
        event({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
               "usage": {"output_tokens": 5}})
        event({"type": "message_stop"})


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
