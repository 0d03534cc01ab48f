"""Agents on the runtime: ``Agent``, ``@tool``, the built-in loop actors and tools."""

from workers.agents._agent import Agent, registered_agents
from workers.agents._builtin_tools import recall, remember, search_documents
from workers.agents._events import (
    AgentFinished,
    ModelCallRequested,
    ToolCallFinished,
    ToolCallRequested,
)
from workers.agents._loop import OutcomeUnknown, model_call, tool_call, tools_joined
from workers.agents._model import BudgetExceeded, ModelRefused, OutputInvalid
from workers.agents._pricing import DEFAULT_PRICES, Price
from workers.agents._tool import Tool, ToolArgumentsInvalid, tool

__all__ = [
    # declaring
    "Agent",
    "Tool",
    "tool",
    # built-in tools
    "recall",
    "remember",
    "search_documents",
    # the loop's events
    "AgentFinished",
    "ModelCallRequested",
    "ToolCallFinished",
    "ToolCallRequested",
    # the loop's actors
    "model_call",
    "tool_call",
    "tools_joined",
    # errors
    "BudgetExceeded",
    "ModelRefused",
    "OutcomeUnknown",
    "OutputInvalid",
    "ToolArgumentsInvalid",
    # cost
    "DEFAULT_PRICES",
    "Price",
    "registered_agents",
]
