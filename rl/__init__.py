"""arbor-rl core: tasks, grading, models, search, experience, labels, losses.

This package never imports ray or deepspeed; actors/ and learners/ wrap it.
"""
