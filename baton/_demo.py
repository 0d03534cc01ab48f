"""`baton demo`: the issue-triage agent end to end on the embedded defaults, through the
front door: a GitHub-signed `issues.opened` webhook posted to the gateway over HTTP.

Valkey (embedded), SQLite, the gateway and a worker in this process and, with no
OPENAI_API_KEY, Baton's offline model over real HTTP. With a key, the same agent talks to
the real model unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from baton import _render
from baton._stack import Stack
from events import BatonError
from gateway import GatewayConfig, ServerThread, create_app
from store import (
    conversation_of,
    effects_of_run,
    run_detail,
    run_status,
    tool_calls_of,
)
from store._search import add_document
from workers import Worker, import_modules

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PAYLOAD = EXAMPLES / "payloads" / "github.issues.opened.json"
DOCUMENTS = [Path(__file__).resolve().parent.parent / "README.md"]


def run_demo(parts: Stack, out: Console, err: Console) -> int:
    started = time.monotonic()
    parts.upgrade_schema()
    import_modules(["examples.triage"])
    for document in DOCUMENTS:
        if document.exists():
            add_document(parts.store, document.name, document.stem, document.read_text())
    with _model(parts, err) as demo_parts:
        demo_parts.check_reachable()
        worker = Worker(demo_parts.runtime, threads=4)
        worker.start()
        secret = secrets.token_hex(16)
        gateway = ServerThread(
            create_app(demo_parts.runtime, GatewayConfig(github_secrets=[SecretStr(secret)]))
        )
        gateway.start()
        try:
            run_id = _deliver(gateway.url, secret, err)
            deadline = time.monotonic() + 60
            while run_status(demo_parts.store, run_id) not in (
                "succeeded",
                "failed",
                "canceled",
            ):
                if time.monotonic() > deadline:
                    err.print(f"[red]run {run_id} did not finish within 60 s[/red]")
                    return 1
                time.sleep(0.02)
        finally:
            gateway.stop()
            worker.stop()
        out.print(report(demo_parts, run_id))
    status = run_status(parts.store, run_id)
    err.print(f"done in {time.monotonic() - started:.1f} s: run {status}")
    return 0 if status == "succeeded" else 1


@contextmanager
def _model(parts: Stack, err: Console) -> Iterator[Stack]:
    """The parts with a model: the configured endpoint, or the offline model started here."""
    if parts.settings.openai_api_key is not None:
        yield parts
        return
    from workers.agents.offline_model import OfflineModelConfig, start_in_thread

    with start_in_thread(OfflineModelConfig()) as model:
        err.print(f"no OPENAI_API_KEY: using Baton's offline model at {model.base_url}")
        settings = parts.settings.model_copy(
            update={"openai_base_url": model.base_url, "openai_api_key": None}
        )
        offline = Stack(settings)
        # The offline model takes any key; the client insists on having one.
        offline.runtime.config.__dict__["model_api_key"] = "offline"
        yield offline


def _deliver(url: str, secret: str, err: Console) -> str:
    """POST the payload as GitHub would: its exact bytes, signed with HMAC-SHA256."""
    body = PAYLOAD.read_bytes()
    payload = json.loads(body)
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    delivery = str(uuid.uuid4())
    err.print(
        f"POST {url}/webhooks/github  X-GitHub-Event: issues  ({payload['repository']['full_name']}"
        f"#{payload['issue']['number']}: {payload['issue']['title']!r})"
    )
    response = httpx.post(
        f"{url}/webhooks/github",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "issues",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": f"sha256={signature}",
        },
        timeout=10,
    )
    if response.status_code != 202:
        raise BatonError(f"the gateway answered {response.status_code}: {response.text}")
    run_id = str(response.json()["run_id"])
    err.print(f"202 Accepted: run {run_id}")
    return run_id


def report(parts: Stack, run_id: str) -> Group:
    """The conversation, tool calls, effects, usage and step tree of an agent run."""
    detail = run_detail(parts.store, run_id)
    run = detail["run"]
    conversation = Table(title="conversation", title_justify="left", show_lines=True)
    conversation.add_column("role", style="bold")
    conversation.add_column("message", overflow="fold")
    for message in conversation_of(parts.store, run_id):
        conversation.add_row(message["role"], _message_text(message))
    tools = Table(title="tool calls", title_justify="left")
    for column in ("tool", "arguments", "result"):
        tools.add_column(column, overflow="fold")
    for call in tool_calls_of(parts.store, run_id):
        tools.add_row(call["tool"], json.dumps(call["arguments"]), str(call["result"])[:120])
    effects = Table(title="effects on GitHub (stand-in)", title_justify="left")
    for column in ("kind", "target", "payload"):
        effects.add_column(column, overflow="fold")
    for effect in effects_of_run(parts.store, run_id):
        effects.add_row(effect["kind"], effect["target"], json.dumps(effect["payload"]))
    usage = Text.assemble(
        ("usage  ", "bold"),
        f"{run['model_calls']} model calls, {run['input_tokens']:,} input + "
        f"{run['output_tokens']:,} output tokens ({run['cached_tokens']:,} cached), "
        f"cost ${run['cost_usd']:.6f}",
    )
    result = detail["memory"].get("triage")
    outcome = Panel(
        json.dumps(result, indent=2) if result else "no result", title="TriageResult", expand=False
    )
    return Group(conversation, tools, effects, outcome, usage, Text(""), _render.run_view(detail))


def _message_text(message: dict[str, Any]) -> str:
    parts = []
    if message["content"]:
        parts.append(str(message["content"]))
    for call in message.get("tool_calls") or []:
        parts.append(f"→ {call['function']['name']}({call['function']['arguments']})")
    if message["role"] == "tool":
        parts.insert(0, f"[{message['name']}]")
    return "\n".join(parts)
