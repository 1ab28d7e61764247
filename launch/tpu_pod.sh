#!/usr/bin/env bash
# Run one command on every worker of an existing Cloud TPU VM slice (creates nothing).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [PROJECT] -- python -m postcam_jax.train --config=...
#
# The command runs from REPO_DIR on each worker (default: ~/postcam-jax, which must already hold
# this repository and its virtualenv; see SETUP below). postcam_jax.parallel.distributed.initialize() then
# calls jax.distributed.initialize() with no arguments: the TPU metadata gives every worker its
# index and the coordinator. Environment for the workers: POSTCAM_DISTRIBUTED=auto, plus anything
# in EXTRA_ENV (e.g. EXTRA_ENV="XLA_FLAGS=... WANDB_MODE=offline").
#
# SETUP (optional, runs first on every worker when set), e.g.
#   SETUP="cd ~/postcam-jax && git pull && .venv/bin/pip install -q -e .[tpu]"
set -euo pipefail

usage() {
  echo "usage: $0 TPU_NAME ZONE [PROJECT] -- COMMAND..." >&2
  exit 2
}

[[ $# -ge 4 ]] || usage
TPU_NAME=$1
ZONE=$2
shift 2
PROJECT=""
if [[ $1 != "--" ]]; then
  PROJECT=$1
  shift
fi
[[ ${1:-} == "--" ]] || usage
shift
[[ $# -ge 1 ]] || usage

REPO_DIR=${REPO_DIR:-'~/postcam-jax'}
VENV=${VENV:-.venv}
# Quote the command so it reaches the workers' shell as given.
COMMAND=$(printf '%q ' "$@")
REMOTE="cd ${REPO_DIR} && source ${VENV}/bin/activate && "
REMOTE+="env POSTCAM_DISTRIBUTED=auto ${EXTRA_ENV:-} ${COMMAND}"
if [[ -n ${SETUP:-} ]]; then
  REMOTE="${SETUP} && ${REMOTE}"
fi

ARGS=(compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="${REMOTE}")
if [[ -n ${PROJECT} ]]; then
  ARGS+=(--project="${PROJECT}")
fi
echo "[tpu_pod] ${TPU_NAME} (${ZONE}), all workers: ${REMOTE}" >&2
exec gcloud "${ARGS[@]}"
