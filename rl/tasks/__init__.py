"""Tasks: problems, prompts, step termination, answer extraction, reward."""
from rl.tasks.arithmetic import ArithmeticTask
from rl.tasks.base import Problem, Task, load_problems, save_problems
from rl.tasks.termination import termination_for

TASKS = {"arithmetic": ArithmeticTask}


def build_task(cfg) -> Task:
    """The task a TaskConfig names, with its termination function (task.termination)."""
    if cfg.name not in TASKS:
        raise ValueError(f"task.name = {cfg.name!r}: known tasks are {', '.join(TASKS)}")
    return TASKS[cfg.name](cfg.arithmetic, termination=termination_for(cfg.termination))


__all__ = ["Problem", "Task", "TASKS", "ArithmeticTask", "build_task", "load_problems", "save_problems"]
