"""Ray actors: thin shells around plain classes from rl/."""
