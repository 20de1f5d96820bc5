# Sourced by the sbatch scripts: find the repository, enter it and activate its virtualenv.
#   GPT_REPO  repository root [$SLURM_SUBMIT_DIR: submit from the root]
#   VENV      virtualenv to activate [$GPT_REPO/.venv, when it exists]
# Defines die() for one-line errors prefixed with the script's name ($JOB_KIND).

die() { echo "[${JOB_KIND:-slurm}] error: $*" >&2; exit 2; }

[[ -n ${SLURM_JOB_ID:-} ]] || die "not inside a Slurm job: submit with sbatch"
GPT_REPO=${GPT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$GPT_REPO" || die "cannot enter GPT_REPO=$GPT_REPO"
[[ -f training/pretrain.py ]] || die "GPT_REPO=$GPT_REPO is not the repository root (no training/pretrain.py)"
VENV=${VENV:-$GPT_REPO/.venv}
# shellcheck disable=SC1091
if [[ -f $VENV/bin/activate ]]; then source "$VENV/bin/activate"; fi
command -v gpt-data >/dev/null || die "the package is not installed in this environment (pip install -e $GPT_REPO)"
