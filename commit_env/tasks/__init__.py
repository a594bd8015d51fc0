"""Tasks: prompts plus verifiable scorers.

Embedded families (``qa``, ``math``, ``code``) ship with the package; ``gsm8k`` and ``humaneval``
load real data sets. See :func:`get_task` and :func:`list_tasks`.
"""

from commit_env.tasks.base import EmbeddedTask, Example, Task
from commit_env.tasks.registry import EMBEDDED_TASKS, TASKS, get_task, list_tasks, register_task

__all__ = [
    "EMBEDDED_TASKS",
    "EmbeddedTask",
    "Example",
    "TASKS",
    "Task",
    "get_task",
    "list_tasks",
    "register_task",
]
