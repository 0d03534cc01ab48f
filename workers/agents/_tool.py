"""``@tool``: a typed function an agent may call, its JSON schema taken from the signature."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import json
import re
from collections.abc import Callable
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from events import describe_validation
from workers._context import Context
from workers._errors import ActorError

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOOL_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="tool")


class ToolArgumentsInvalid(ValueError):
    """The model's arguments do not fit the tool's schema; the model is told and may retry."""


class Tool:
    """A registered tool: name, description, argument model; call it with validated arguments."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        description: str,
        arguments: type[BaseModel],
        wants_context: bool,
        idempotent: bool,
        approval: bool,
    ) -> None:
        self.fn = fn
        self.name = name
        self.description = description
        self.arguments = arguments
        self.wants_context = wants_context
        self.idempotent = idempotent
        self.approval = approval
        self.is_async = inspect.iscoroutinefunction(fn)
        self._schema: dict[str, Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r}, idempotent={self.idempotent}, approval={self.approval})"

    def schema(self) -> dict[str, Any]:
        """The tool as OpenAI's Chat Completions API takes it."""
        # Built once: every model call sends it, and pydantic's schema generation is slow.
        if self._schema is None:
            parameters = self.arguments.model_json_schema()
            parameters.pop("title", None)
            self._schema = {
                "type": "function",
                "function": {
                    "name": self.name,
                    "description": self.description,
                    "parameters": parameters,
                },
            }
        return self._schema

    def validate(self, raw: str) -> dict[str, Any]:
        """Parse and validate the model's JSON arguments; ToolArgumentsInvalid says what is off."""
        try:
            data = json.loads(raw or "{}")
        except json.JSONDecodeError as error:
            raise ToolArgumentsInvalid(f"arguments are not valid JSON: {error.msg}") from None
        if not isinstance(data, dict):
            raise ToolArgumentsInvalid("arguments must be a JSON object")
        try:
            parsed = self.arguments.model_validate(data)
        except ValidationError as error:
            raise ToolArgumentsInvalid(describe_validation(error)) from None
        return {field: getattr(parsed, field) for field in type(parsed).model_fields}

    async def invoke(self, arguments: dict[str, Any], ctx: Context) -> Any:
        """Call the function (a sync one in a thread, so the event loop keeps moving)."""
        kwargs = {**arguments, "ctx": ctx} if self.wants_context else dict(arguments)
        if self.is_async:
            return await self.fn(**kwargs)
        # Not the default executor: the store's calls use that one, and a tool that hangs
        # must not take the threads that commit steps.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_TOOL_THREADS, functools.partial(self.fn, **kwargs))


@overload
def tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    idempotent: bool = False,
    approval: bool = False,
) -> Tool: ...


@overload
def tool(
    fn: None = None,
    *,
    name: str | None = None,
    idempotent: bool = False,
    approval: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    idempotent: bool = False,
    approval: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a tool. Its parameters (type-annotated) become the JSON schema the model sees,
    its docstring the description. A parameter ``ctx: Context`` receives the step's context.

    ``idempotent=True``: safe to call again if a previous attempt may have called it already.
    ``approval=True``: the run waits for `baton signal RUN approve` (or reject) before calling.
    """

    def decorate(function: Callable[..., Any]) -> Tool:
        return _build(function, name, idempotent, approval)

    return decorate if fn is None else decorate(fn)


def _build(
    function: Callable[..., Any], name: str | None, idempotent: bool, approval: bool
) -> Tool:
    label = f"tool {function.__module__}.{function.__qualname__}"
    tool_name = name or function.__name__
    if not _NAME.match(tool_name):
        raise ActorError(f"{label}: name {tool_name!r} must be 1-64 letters, digits, '_' or '-'")
    description = inspect.cleandoc(function.__doc__ or "").strip()
    if not description:
        raise ActorError(f"{label} needs a docstring: it is what the model reads to choose it")
    try:
        hints = get_type_hints(function)
    except NameError as error:
        raise ActorError(f"{label}: cannot resolve its annotations ({error})") from None
    fields: dict[str, Any] = {}
    wants_context = False
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ActorError(f"{label}: *args and **kwargs cannot be described to a model")
        annotation = hints.get(parameter.name)
        if annotation is Context or parameter.name == "ctx":
            wants_context = True
            continue
        if annotation is None:
            raise ActorError(
                f"{label}: parameter {parameter.name!r} needs a type annotation (the model "
                "is told the type)"
            )
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    arguments = create_model(
        f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )
    return Tool(
        function,
        name=tool_name,
        description=description,
        arguments=arguments,
        wants_context=wants_context,
        idempotent=idempotent,
        approval=approval,
    )
