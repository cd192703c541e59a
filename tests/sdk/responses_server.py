"""A tiny Responses-API server for scripts/e2e.sh (Python stdlib only, loopback only).

Usage: python3 responses_server.py RECORD_FILE
  Listens on 127.0.0.1 on a free port and prints the port on stdout.
  POST /v1/responses   fixed answer "from the responses server": JSON, or SSE (the full
                       event sequence) when the request says "stream": true; appends one
                       JSON line per request to RECORD_FILE: {"model", "stream",
                       "instructions", "headers", "function_call_output"}.
                       Tool round trip (Codex CLI): when the request offers a shell-like
                       function tool (exec_command, shell_command or shell) and its input
                       has no function_call_output yet, the answer is a call of that tool
                       running `echo warden-e2e-tool`; once the output comes back, the
                       answer is the text "tool said: OUTPUT".
  GET /prompts/NAME    a prompt server: the text prompt_text(NAME)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEXT = "from the responses server"
USAGE = {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}


def prompt_text(name):
    return f"E2E PROMPT {name}: answer the openai SDK check.\n"


def response_object(model, item=None, status="completed"):
    if item is None:
        item = {"type": "message", "id": "msg_e2e", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": TEXT, "annotations": []}]}
    return {
        "id": "resp_e2e", "object": "response", "created_at": 1, "status": status,
        "model": model, "usage": USAGE if status == "completed" else None,
        "output": [item] if status == "completed" else [],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
    }


TOOL_ARGS = {
    "exec_command": {"cmd": "echo warden-e2e-tool"},
    "shell_command": {"command": "echo warden-e2e-tool"},
    "shell": {"command": ["echo", "warden-e2e-tool"]},
}


def tool_round_trip(request):
    """The answer item for a tool round trip, or None for the plain text answer."""
    items = request.get("input") if isinstance(request.get("input"), list) else []
    outputs = [i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
    if outputs:
        output = outputs[-1].get("output")
        if isinstance(output, list):
            output = " ".join(p.get("text", "") for p in output if isinstance(p, dict))
        text = f"tool said: {output}"
        return {"type": "message", "id": "msg_tool", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}, str(output)
    names = [t.get("name") for t in request.get("tools") or [] if t.get("type") == "function"]
    for name, args in TOOL_ARGS.items():
        if name in names:
            return {"type": "function_call", "id": "fc_e2e", "status": "completed", "call_id": "call_e2e",
                    "name": name, "arguments": json.dumps(args)}, None
    return None, None


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
        item, tool_output = tool_round_trip(request)
        with open(sys.argv[1], "a") as record:
            record.write(json.dumps({"model": request.get("model"), "stream": request.get("stream", False),
                                     "instructions": request.get("instructions"),
                                     "headers": {k.lower(): v for k, v in self.headers.items()},
                                     "function_call_output": tool_output}) + "\n")
        model = request.get("model")
        whole = response_object(model, item)
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
        seq = [0]

        def event(data):
            data["sequence_number"] = seq[0]
            seq[0] += 1
            self.wfile.write(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        done_item = whole["output"][0]
        event({"type": "response.created", "response": response_object(model, status="in_progress")})
        event({"type": "response.in_progress", "response": response_object(model, status="in_progress")})
        if done_item["type"] == "function_call":
            added = dict(done_item, arguments="", status="in_progress")
            event({"type": "response.output_item.added", "output_index": 0, "item": added})
            event({"type": "response.function_call_arguments.delta", "item_id": done_item["id"],
                   "output_index": 0, "delta": done_item["arguments"]})
            event({"type": "response.function_call_arguments.done", "item_id": done_item["id"],
                   "output_index": 0, "arguments": done_item["arguments"]})
        else:
            text = done_item["content"][0]["text"]
            at = {"item_id": done_item["id"], "output_index": 0, "content_index": 0}
            event({"type": "response.output_item.added", "output_index": 0,
                   "item": dict(done_item, content=[], status="in_progress")})
            event(dict(at, type="response.content_part.added",
                       part={"type": "output_text", "text": "", "annotations": []}))
            for i, piece in enumerate(text.split(" ")):
                event(dict(at, type="response.output_text.delta", delta=piece if i == 0 else " " + piece))
            event(dict(at, type="response.output_text.done", text=text))
            event(dict(at, type="response.content_part.done", part=done_item["content"][0]))
        event({"type": "response.output_item.done", "output_index": 0, "item": done_item})
        event({"type": "response.completed", "response": whole})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
