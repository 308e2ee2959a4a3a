"""Data: readers (formats -> frames), tasks (columns, labels, splits), tokenize (datasets + collators)."""

from .tasks import TaskData, load_task

__all__ = ["TaskData", "load_task"]
