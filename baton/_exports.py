"""Runs out of the store, in formats other tools read.

- ``openai-chat``: one line per agent loop in OpenAI's chat fine-tuning format (supervised):
  ``{"messages": [...], "tools": [...], "parallel_tool_calls": ...}``, the tools' schemas as
  the agent sent them (the loop's first recorded request), every message redacted.
- ``cassette``: a run's model exchanges, request and response in the order they were made,
  as an offline-model cassette, so a production run becomes a regression test.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from baton._redaction import Redactor
from events import BatonError
from store import LoopRecord, NotFound, Store, model_exchanges

if TYPE_CHECKING:
    from workers.agents.offline_model import Cassette


class ExportError(BatonError):
    """What was recorded cannot be written in the format asked for."""


def training_example(record: LoopRecord, redact: Redactor) -> dict[str, Any] | None:
    """One agent loop as a chat fine-tuning example, or None if it has no assistant message."""
    messages = [redact(chat_message(row)) for row in record.messages]
    answered = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    if not answered:
        return None
    # An example ends with what the model said; a loop cut short ends with tool results.
    messages = messages[: answered[-1] + 1]
    example: dict[str, Any] = {"messages": messages}
    request = record.request or {}
    tools = request.get("tools")
    if tools:
        example["tools"] = tools
        parallel = bool(request.get("parallel_tool_calls", True))
        # What the model did wins over what it was asked: it made several calls at once.
        if any(len(message.get("tool_calls") or []) > 1 for message in messages):
            parallel = True
        example["parallel_tool_calls"] = parallel
    return example


def chat_message(row: dict[str, Any]) -> dict[str, Any]:
    """A conversation row as a fine-tuning message: only the fields its role takes."""
    role = row["role"]
    content = row["content"]
    if content is not None and not isinstance(content, str | list):
        content = json.dumps(content)
    if role == "tool":
        return {"role": "tool", "tool_call_id": row["tool_call_id"], "content": content or ""}
    message: dict[str, Any] = {"role": role}
    calls = (row["tool_calls"] or []) if role == "assistant" else []
    if content is not None or not calls:
        message["content"] = "" if content is None else content
    if calls:
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {
                    "name": call["function"]["name"],
                    "arguments": _arguments(call["function"].get("arguments")),
                },
            }
            for call in calls
        ]
    if row.get("name"):
        message["name"] = row["name"]
    return message


def _arguments(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments if arguments is not None else {})


def cassette_of(store: Store, run_id: str) -> Cassette:
    """A run's model exchanges, in order, as a cassette the offline model replays."""
    # The offline model brings FastAPI and uvicorn: import them only for this command.
    from workers.agents.offline_model import Cassette

    cassette = Cassette()
    exchanges = model_exchanges(store, run_id)
    if not exchanges:
        raise NotFound(f"run {run_id} made no model calls; there is nothing to record")
    for index, exchange in enumerate(exchanges):
        try:
            cassette.record(exchange["request"], exchange["response"])
        except ValidationError as error:
            raise ExportError(
                f"model call {index} of run {run_id} is not a chat completion a cassette can "
                f"hold: {error.errors()[0]['msg']}"
            ) from None
    return cassette


def write_atomically(path: Path, lines: Iterable[str]) -> int:
    """Write ``lines`` to ``path`` through a temporary file; returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as handle:
        try:
            for line in lines:
                handle.write(line + "\n")
                count += 1
        except BaseException:
            handle.close()
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)
    return count
