"""A small stand-in for vLLM's OpenAI-compatible server, for the vLLM backend's error paths.

It speaks the few endpoints the daemon uses (/v1/models, /v1/completions with stream: true, the runtime LoRA
endpoints) and records what it was sent. It generates nothing: each completion streams `script`, one piece an
event. The real server is tested in test_vllm_real.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FakeVllm:
    def __init__(self, model: str, port: int = 0, max_lora_rank: int = 8) -> None:
        self.model = model
        self.max_lora_rank = max_lora_rank
        self.script = ["def ", "f(x", "):\n", "    return", " x\n"]
        self.delay_s = 0.0  # between two pieces
        self.requests: list[dict[str, Any]] = []  # the bodies of /v1/completions
        self.adapters: dict[str, str] = {}  # name -> path
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.disconnected = threading.Event()  # a stream whose client went away before it ended
        self.refuse_load = ""  # a message: the next loads fail with it
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> dict[str, Any]:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    data = [{"id": fake.model, "root": fake.model, "parent": None, "max_model_len": 512}]
                    data += [{"id": n, "root": p, "parent": fake.model} for n, p in fake.adapters.items()]
                    self._json(200, {"object": "list", "data": data})
                elif self.path == "/health":
                    self._json(200, {})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                body = self._body()
                if self.path == "/v1/load_lora_adapter":
                    name, path = body["lora_name"], body["lora_path"]
                    if fake.refuse_load:
                        return self._json(400, {"error": {"message": fake.refuse_load, "code": 400}})
                    if name in fake.adapters:
                        return self._json(400, {"error": {"message": f"The lora adapter '{name}' has already been loaded."}})  # fmt: skip
                    rank = json.loads((Path(path) / "adapter_config.json").read_text())["r"]
                    if rank > fake.max_lora_rank:
                        msg = f"LoRA rank {rank} is greater than max_lora_rank {fake.max_lora_rank}."
                        return self._json(400, {"error": {"message": msg, "code": 400}})
                    fake.adapters[name] = path
                    fake.loads.append(name)
                    return self._json(200, {})
                if self.path == "/v1/unload_lora_adapter":
                    fake.adapters.pop(body["lora_name"], None)
                    fake.unloads.append(body["lora_name"])
                    return self._json(200, {})
                if self.path != "/v1/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                fake.requests.append(body)
                if body["model"] != fake.model and body["model"] not in fake.adapters:
                    return self._json(
                        404, {"error": {"message": f"The model `{body['model']}` does not exist."}}
                    )
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                pieces = fake.script[: body.get("max_tokens", 16)]
                try:
                    for i, piece in enumerate(pieces):
                        last = i == len(pieces) - 1
                        event = {
                            "choices": [
                                {"index": 0, "text": piece, "finish_reason": "length" if last else None}
                            ]
                        }
                        self._chunk(f"data: {json.dumps(event)}\n\n")
                        time.sleep(fake.delay_s)
                    usage = {"choices": [], "usage": {"completion_tokens": len(pieces)}}
                    self._chunk(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    fake.disconnected.set()

            def _chunk(self, text: str) -> None:
                data = text.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
