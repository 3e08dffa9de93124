"""Tasks: problems, prompts, step termination, answer extraction, reward."""
from rl.tasks.base import Problem, Task, load_problems, save_problems
from rl.tasks.arithmetic import ArithmeticTask

TASKS = {"arithmetic": ArithmeticTask}

__all__ = ["Problem", "Task", "TASKS", "ArithmeticTask", "load_problems", "save_problems"]
