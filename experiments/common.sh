# Shared helpers of the experiment scripts (sourced, not run).
set -euo pipefail
CLAP=${CLAP:-clap}
if ! command -v "$CLAP" >/dev/null 2>&1; then CLAP="$(dirname "$0")/../.venv/bin/clap"; fi

# step MARKER CMD...: run `clap CMD...` unless MARKER exists (a finished output), so a second run of
# a script only does what is missing. Training commands pass MARKER "-" (always run) with --resume:
# a finished run returns at once and a killed one continues from its last checkpoint.
step() {
  local marker=$1; shift
  if [[ $marker != - && -e $marker ]]; then echo "== skip (exists: $marker): clap $*"; return 0; fi
  echo "== clap $*"
  "$CLAP" "$@"
}
