"""The slice of the OpenAI Chat Completions wire format the offline model reads and writes."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "ChatCompletionRequest",
    "Message",
    "OfflineModelError",
    "ToolDefinition",
    "canonical_json",
    "error_body",
    "request_error_from_validation",
]

_TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class _WireModel(BaseModel):
    # Clients send fields this model ignores (temperature, metadata, ...); accept them.
    model_config = ConfigDict(extra="allow", frozen=True)


class FunctionCall(_WireModel):
    name: str
    arguments: str


class ToolCall(_WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_WireModel):
    type: str
    text: str | None = None


class Message(_WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check_role_fields(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs a 'tool_call_id'")
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a message with role {self.role!r} needs 'content'")
        return self

    @property
    def text(self) -> str:
        """The message's text: a string content, or its text parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if part.text is not None)


class FunctionDefinition(_WireModel):
    name: Annotated[str, Field(pattern=_TOOL_NAME_PATTERN)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_WireModel):
    name: str


class NamedToolChoice(_WireModel):
    type: Literal["function"]
    function: NamedFunction


class TextFormat(_WireModel):
    type: Literal["text"]


class JsonObjectFormat(_WireModel):
    type: Literal["json_object"]


class JsonSchemaSpec(_WireModel):
    name: str
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(_WireModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class ChatCompletionRequest(_WireModel):
    """A `POST /v1/chat/completions` body, validated the way the real API validates it."""

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stream: bool | None = None
    n: Annotated[int, Field(ge=1, le=8)] | None = None

    @field_validator("messages")
    @classmethod
    def _check_tool_call_pairing(cls, messages: list[Message]) -> list[Message]:
        _check_tool_call_pairing(messages)
        return messages

    @field_validator("tools")
    @classmethod
    def _check_unique_tool_names(
        cls, tools: list[ToolDefinition] | None
    ) -> list[ToolDefinition] | None:
        names = [tool.function.name for tool in tools or []]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique; got {names!r}")
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _check_named_tool_is_offered(
        cls, choice: str | NamedToolChoice | None, info: ValidationInfo
    ) -> str | NamedToolChoice | None:
        offered = [tool.function.name for tool in info.data.get("tools") or []]
        if isinstance(choice, NamedToolChoice) and choice.function.name not in offered:
            raise ValueError(
                f"tool_choice names {choice.function.name!r}, which is not among the offered "
                f"tools {offered!r}"
            )
        return choice

    @property
    def tool_names(self) -> list[str]:
        """Names of the offered tools, in the order offered."""
        return [tool.function.name for tool in self.tools or []]


def _check_tool_call_pairing(messages: list[Message]) -> None:
    """Every tool call is answered by a tool message, and every tool message answers one."""
    unanswered: dict[str, int] = {}
    for index, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id not in unanswered:
                raise ValueError(
                    f"messages[{index}] has role 'tool' but tool_call_id "
                    f"{message.tool_call_id!r} answers no preceding assistant tool call"
                )
            del unanswered[message.tool_call_id]
            continue
        if unanswered:
            break
        for call in message.tool_calls or []:
            unanswered[call.id] = index
    if unanswered:
        raise ValueError(
            "an assistant message with 'tool_calls' must be followed by tool messages "
            f"answering each call; unanswered tool_call_ids: {sorted(unanswered)!r}"
        )


class OfflineModelError(Exception):
    """An error the offline model answers with, as an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The `{"error": {...}}` body OpenAI clients parse."""
        return error_body(self.message, self.error_type, param=self.param, code=self.code)


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def request_error_from_validation(error: ValidationError, data: object) -> OfflineModelError:
    """Turn pydantic's first complaint about `data` into a 400 naming the field, as OpenAI does."""
    first = error.errors(include_url=False)[0]
    missing = first["type"] == "missing"
    param = _location_to_param(first["loc"], data, missing=missing)
    what = "Missing required parameter" if missing else "Invalid parameter"
    reason = first["msg"].removeprefix("Value error, ")
    message = f"{what} {param!r}: {reason}" if param else f"Invalid request: {reason}"
    if error.error_count() > 1:
        message += f" (and {error.error_count() - 1} more problem(s))"
    code = "missing_required_parameter" if missing else "invalid_value"
    return OfflineModelError(400, message, param=param or None, code=code)


def _location_to_param(location: tuple[int | str, ...], data: object, *, missing: bool) -> str:
    # pydantic puts union branches and discriminator tags into locations; the wire has no such
    # keys, so keep only the parts found in the request itself (plus the name of a missing one).
    param = ""
    node = data
    for position, part in enumerate(location):
        found, child = _child(node, part)
        if found:
            node = child
        elif not (missing and position == len(location) - 1):
            continue
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else part)
    return param


def _child(node: object, part: int | str) -> tuple[bool, object]:
    if isinstance(node, dict) and part in node:
        return True, node[part]
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return True, node[part]
    return False, None


def canonical_json(value: Any) -> str:
    """Key-sorted, compact JSON: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
