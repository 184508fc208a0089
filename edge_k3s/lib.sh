# shellcheck shell=bash
# Shared helpers of the edge kit, sourced by its scripts (not run on its own).
#
#   KV_ROOT   prefix for every file the kit reads or writes on the node (/proc, /etc, /var/lib,
#             /usr/local/bin): empty on a real node; the tests point it at a fake root.
#   DRY_RUN=1 print what would be done (commands and file contents, secrets masked) and change
#             nothing; the scripts' --dry-run sets it.

KV_ROOT=${KV_ROOT:-}
DRY_RUN=${DRY_RUN:-0}

log() { printf '[kubevision-edge] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# run CMD ARGS... : run a command, or print it (shell-quoted) in a dry run
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# write_file PATH MODE : write stdin to $KV_ROOT/PATH with MODE, or print it in a dry run.
# Lines matching a secret (token:, token-file contents) are never passed through here.
write_file() {
  local path=$KV_ROOT$1 mode=$2 content
  content=$(cat)
  if [[ $DRY_RUN == 1 ]]; then
    printf '+ write %s (mode %s):\n%s\n' "$path" "$mode" "$content"
    return
  fi
  install -d -m 0755 "$(dirname "$path")"
  (umask 077 && printf '%s\n' "$content" >"$path")
  chmod "$mode" "$path"
}

# need_root : stop unless root (a dry run needs nothing)
need_root() {
  [[ $DRY_RUN == 1 || $EUID == 0 ]] || die "run as root (or with --dry-run to see the plan)"
}

# valid_label_value VALUE : a Kubernetes label value (what the API server would accept)
valid_label_value() {
  [[ ${#1} -le 63 && $1 =~ ^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$ ]]
}
