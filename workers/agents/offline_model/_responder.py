"""Default mode: answer a chat completion the way a careful, deterministic test model would.

While some offered tool has not been called in the conversation, call every such tool at once
(only the first when `parallel_tool_calls` is false); then answer with JSON valid against the
requested `response_format`, or with a short text that summarises the tool results.
`tool_choice` is obeyed: "none" answers at once, a named tool is called every time, and
"required" calls the first tool again once all have been called.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ._conversation import Conversation
from ._protocol import (
    ChatCompletionRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
)
from ._synthesis import synthesise
from ._usage import count_words, usage

__all__ = ["CREATED", "respond"]

# A fixed creation time: a timestamp would make identical requests give different bytes.
CREATED = 1_735_689_600
SYSTEM_FINGERPRINT = "fp_baton_offline"
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def respond(request: ChatCompletionRequest, request_digest: str) -> dict[str, Any]:
    """The response body for `request`; `request_digest` (a hex hash of the body) seeds its ids."""
    conversation = Conversation(request.messages)
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    tool_calls = _tool_calls(request, conversation, request_digest)
    if tool_calls:
        message["tool_calls"] = tool_calls
        finish_reason = "tool_calls"
        completion_tokens = sum(
            count_words(call["function"]["name"]) + count_words(call["function"]["arguments"])
            for call in tool_calls
        )
    else:
        message["content"] = _answer(request, conversation)
        finish_reason = "stop"
        completion_tokens = count_words(message["content"])
    message["annotations"] = []
    choices = request.n or 1
    return {
        "id": f"chatcmpl-{request_digest[:29]}",
        "object": "chat.completion",
        "created": CREATED,
        "model": request.model,
        "choices": [
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}
            for index in range(choices)
        ],
        "usage": usage(request, max(completion_tokens, 1), choices),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def _tool_calls(
    request: ChatCompletionRequest, conversation: Conversation, request_digest: str
) -> list[dict[str, Any]]:
    if not request.tools or request.tool_choice == "none":
        return []
    if isinstance(request.tool_choice, NamedToolChoice):
        names = [request.tool_choice.function.name]
    else:
        names = [n for n in request.tool_names if n not in conversation.called_tool_names]
        if not names and request.tool_choice == "required":
            names = request.tool_names[:1]
    if request.parallel_tool_calls is False:
        names = names[:1]
    parameters = {tool.function.name: tool.function.parameters for tool in request.tools}
    calls = []
    for index, name in enumerate(names):
        arguments = synthesise(parameters[name] or _EMPTY_PARAMETERS, conversation)
        call_digest = hashlib.sha256(f"{request_digest}:{index}:{name}".encode()).hexdigest()
        calls.append(
            {
                "id": f"call_{call_digest[:24]}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": json.dumps(
                        arguments if isinstance(arguments, dict) else {}, ensure_ascii=False
                    ),
                },
            }
        )
    return calls


def _answer(request: ChatCompletionRequest, conversation: Conversation) -> str:
    response_format = request.response_format
    if isinstance(response_format, JsonSchemaFormat):
        schema = response_format.json_schema.json_schema or {"type": "object"}
        return json.dumps(synthesise(schema, conversation), ensure_ascii=False)
    if isinstance(response_format, JsonObjectFormat):
        return json.dumps({"answer": conversation.summary()}, ensure_ascii=False)
    return conversation.summary()
