"""Token usage the offline model reports: whitespace-separated words, so it is deterministic.

`cached_tokens` is a pure function of the request, not of what this server saw before, so that
identical requests get byte-identical responses: the prefix that an earlier turn of the same
conversation must have sent (the tool schemas plus every message before the last assistant
message) counts as cached; a conversation without an assistant message has nothing cached.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._protocol import ChatCompletionRequest, Message

__all__ = ["count_words", "usage"]


def count_words(text: str) -> int:
    """The offline model's token: one whitespace-separated word."""
    return len(text.split())


def usage(request: ChatCompletionRequest, completion_tokens: int, choices: int) -> dict[str, Any]:
    """The `usage` object for a response to `request`."""
    tool_tokens = sum(
        count_words(json.dumps(tool.model_dump(mode="json", exclude_none=True), sort_keys=True))
        for tool in request.tools or []
    )
    message_tokens = [_message_tokens(message) for message in request.messages]
    prompt_tokens = tool_tokens + sum(message_tokens)
    last_assistant = _last_assistant_index(request.messages)
    cached_tokens = (
        0 if last_assistant is None else tool_tokens + sum(message_tokens[:last_assistant])
    )
    completion_total = completion_tokens * choices
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_total,
        "total_tokens": prompt_tokens + completion_total,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _message_tokens(message: Message) -> int:
    tokens = count_words(message.text)
    for call in message.tool_calls or []:
        tokens += count_words(call.function.name) + count_words(call.function.arguments)
    return tokens


def _last_assistant_index(messages: Sequence[Message]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "assistant":
            return index
    return None
