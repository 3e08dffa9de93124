#!/usr/bin/env bash
# Submit a training run to a running Ray cluster as a Ray job (see docs/multinode.md).
#
#   launch/submit.sh RAY_ADDRESS CONFIG [key.path=value ...]
#
#   RAY_ADDRESS  the head node's job server: HEAD, HEAD:8265 or http://HEAD:8265 (port 8265 by default)
#   CONFIG       a YAML config, relative to the repository root (it is uploaded with the code)
#
# The job runs `arbor train CONFIG --address auto OVERRIDES` on the head node, in a copy of this
# repository uploaded as the job's working_dir (Ray puts it first on PYTHONPATH of the driver and of
# every actor, so the cluster runs exactly this checkout; arbor-rl and its dependencies must be
# installed on every node).
#
# run_dir must be on a filesystem shared by all nodes (NFS, Lustre, ...): the learner ranks write
# checkpoints there from whichever nodes they run on, rollout actors load the base model from
# run_dir/base, and the driver writes summary.json. Pass it as an override, e.g.
#   launch/submit.sh head-node configs/arithmetic.yaml run_dir=/shared/runs/arith
#
# Environment:
#   ARBOR_FORWARD_ENV  names of variables copied from this shell into the job (default:
#                      "WANDB_API_KEY WANDB_MODE HF_HOME HF_HUB_OFFLINE"; only those that are set).
#                      WANDB_API_KEY is needed when wandb.mode is online, unless the nodes already have
#                      it. Forwarded values are visible in the job's runtime_env on the Ray dashboard.
#   ARBOR_NO_WAIT=1    return once the job is submitted instead of streaming its logs
#                      (follow later with `ray job logs --address ... -f JOB_ID`).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,6p' "$0" >&2
    exit 2
fi
address=$1 config=$2
shift 2

# http://HEAD:8265 from whichever form was given
[[ $address == *://* ]] || address="http://$address"
[[ ${address#*://} == *:* ]] || address="$address:8265"

# the job uploads the repository root, so CONFIG must be inside it
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ ! -f $config ]]; then
    echo "submit.sh: config $config not found under $(pwd)" >&2
    exit 2
fi

# runtime_env beyond the working dir: forwarded variables, and what not to upload (runs and git
# history can exceed Ray's 100 MiB working_dir limit)
runtime_env=$(python3 - ${ARBOR_FORWARD_ENV:-WANDB_API_KEY WANDB_MODE HF_HOME HF_HUB_OFFLINE} <<'EOF'
import json, os, sys
print(json.dumps({"env_vars": {k: os.environ[k] for k in sys.argv[1:] if k in os.environ},
                  "excludes": [".git/", "runs/", "wandb/", "*.safetensors", "*.pt"]}))
EOF
)

wait_flag=()
[[ ${ARBOR_NO_WAIT:-0} == 1 ]] && wait_flag=(--no-wait)

exec ray job submit --address "$address" --working-dir . --runtime-env-json "$runtime_env" ${wait_flag[@]+"${wait_flag[@]}"} \
    -- arbor train "$config" --address auto "$@"
