"""Tasks: problems, prompts, step termination, answer extraction, reward."""
from rl.tasks.arithmetic import ArithmeticTask
from rl.tasks.base import Problem, Task, load_problems, save_problems
from rl.tasks.code import CodeTask
from rl.tasks.gsm8k import GSM8KTask
from rl.tasks.math import MathTask
from rl.tasks.termination import termination_for

TASKS = {"arithmetic": ArithmeticTask, "gsm8k": GSM8KTask, "math": MathTask, "code": CodeTask}


def build_task(cfg) -> Task:
    """The task a TaskConfig names, with its termination function (task.termination)."""
    if cfg.name not in TASKS:
        raise ValueError(f"task.name = {cfg.name!r}: known tasks are {', '.join(TASKS)}")
    knobs = {"arithmetic": cfg.arithmetic, "gsm8k": cfg.gsm8k, "math": cfg.math,
             "code": cfg.code}[cfg.name]  # each task's own config section
    return TASKS[cfg.name](knobs, termination=termination_for(cfg.termination))


__all__ = ["Problem", "Task", "TASKS", "ArithmeticTask", "CodeTask", "GSM8KTask", "MathTask", "build_task", "load_problems",
           "save_problems"]
