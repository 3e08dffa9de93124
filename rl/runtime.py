"""Per-actor runtime settings: one BLAS/OpenMP thread per CPU the actor holds.

Plain functions (no Ray import): actors/ and learners/ pass runtime_env(...) to the Ray actors they make.

Two busy processes with two torch threads each oversubscribe a 2-core machine
and made generation ~50x slower; each actor gets threads matching its CPUs.
"""
from __future__ import annotations

import math


def threads_for(num_cpus: float) -> int:
    return max(1, math.floor(num_cpus))


def runtime_env(num_cpus: float) -> dict:
    n = str(threads_for(num_cpus))
    return {"env_vars": {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
                         "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}}
