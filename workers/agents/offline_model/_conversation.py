"""What the offline model reads out of a conversation: values, mentions, tool calls and results."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ._protocol import Message

__all__ = ["Conversation"]

# Properties with these names get the opening words of the latest user message, the way a
# careful model would fill a search box with what it was asked.
_TEXT_PROPERTY_NAMES = frozenset(
    {
        "q",
        "query",
        "question",
        "search",
        "search_query",
        "search_term",
        "term",
        "terms",
        "keywords",
        "topic",
        "prompt",
        "text",
        "input",
        "message",
        "request",
        "task",
        "instructions",
    }
)
_OPENING_WORD_COUNT = 8
_RESULT_WORD_COUNT = 12
_NEXT_KEY = re.compile(r"\s+[\w-]+\s*[:=]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class Conversation:
    """The messages of one request, indexed for the lookups the synthesiser makes."""

    def __init__(self, messages: Sequence[Message]) -> None:
        self._messages = list(messages)
        # Newest first: tool results and the latest user turn outrank the system prompt.
        self._texts_newest_first = [m.text for m in reversed(self._messages) if m.text]
        user_texts = [m.text for m in self._messages if m.role == "user" and m.text]
        self.last_user_text = user_texts[-1] if user_texts else ""
        self.called_tool_names: set[str] = set()
        call_names: dict[str, str] = {}
        for message in self._messages:
            for call in message.tool_calls or []:
                self.called_tool_names.add(call.function.name)
                call_names[call.id] = call.function.name
        self.tool_results: list[tuple[str, str]] = [
            (call_names.get(m.tool_call_id or "", "tool"), m.text)
            for m in self._messages
            if m.role == "tool"
        ]

    def opening_words(self) -> str:
        """The first few words of the latest user message (or 'offline' when there is none)."""
        words = self.last_user_text.split()[:_OPENING_WORD_COUNT]
        return " ".join(words) if words else "offline"

    def lookup(self, name: str) -> str | None:
        """The value written as `name: value` (or as JSON) in the newest message having one."""
        pattern = _key_value_pattern(name)
        for text in self._texts_newest_first:
            for match in pattern.finditer(text):
                value = _NEXT_KEY.split(match.group("value"))[0].strip().rstrip(".")
                if value:
                    return value
        return None

    def lookup_number(self, name: str) -> float | None:
        """The number written as `name: 12` in the newest message having one."""
        value = self.lookup(name)
        match = _NUMBER.match(value) if value is not None else None
        return float(match.group()) if match else None

    def text_for(self, name: str) -> str | None:
        """A string for a property `name`: its written value, or the user's words for a query."""
        value = self.lookup(name)
        if value is None and name.lower() in _TEXT_PROPERTY_NAMES:
            value = self.opening_words()
        return value

    def mentioned(self, options: Sequence[Any]) -> int | None:
        """Index of the option the newest mentioning message names; system prompts count last."""
        texts = [m.text for m in reversed(self._messages) if m.role not in {"system", "developer"}]
        texts += [m.text for m in self._messages if m.role in {"system", "developer"}]
        for text in texts:
            for index, option in enumerate(options):
                if isinstance(option, str) and option and _mentions(text, option):
                    return index
        return None

    def summary(self) -> str:
        """A short answer that says what was asked and what each tool returned."""
        answer = f"Offline answer to {self.opening_words()!r}."
        if self.tool_results:
            results = "; ".join(
                f"{name} returned {_first_words(text, _RESULT_WORD_COUNT)!r}"
                for name, text in self.tool_results
            )
            answer += f" Tool results: {results}."
        return answer


def _key_value_pattern(name: str) -> re.Pattern[str]:
    key = re.escape(name).replace("_", "[_ ]")
    return re.compile(
        rf"(?<![\w-]){key}\"?\s*[:=]\s*\"?(?P<value>[^\"\n,;{{}}\[\]]+)", re.IGNORECASE
    )


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text, re.IGNORECASE) is not None


def _first_words(text: str, count: int) -> str:
    words = text.split()
    return " ".join(words[:count]) + (" ..." if len(words) > count else "")
