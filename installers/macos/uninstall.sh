#!/usr/bin/env bash
# Removes essaim from this macOS account: unloads its LaunchAgent, stops it, then deletes everything
# install.sh made (the files listed in the data folder's installed-files.txt, the Python
# environment, the app in ~/Applications and the launcher), and essaim's settings, identity, cache
# and logs unless --keep-data is given.
#
#   bash uninstall.sh [--keep-data] [--dry-run]
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: uninstall.sh [--keep-data] [--dry-run]

Stops essaim and removes everything its installer made.

  --keep-data   keep essaim's settings (config.toml), identity key, cache and logs, for a later install
  --dry-run     show what would be removed, and change nothing
  -h, --help    show this help
USAGE
}

# >>> shared: common (the same in every installers/*/*.sh; a test checks the copies match)
say() { printf 'essaim: %s\n' "$*"; }
warn() { printf 'essaim: warning: %s\n' "$*" >&2; }
die() {
  printf 'essaim: error: %s\n' "$*" >&2
  exit 1
}

DRY_RUN=0

# run CMD...: runs a command that changes the machine; with --dry-run, only shows it.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf 'essaim: would run:'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# The manifest (installed-files.txt in the data folder) lists what the installer made, one
# "KIND PATH" per line: "file" a file it wrote, "link" a symbolic link, "dir" a folder it created
# (removed when empty), "unit" a service it registered (a systemd unit or a launchd label).
# read_manifest FILE: prints its entries; nothing when FILE does not exist.
read_manifest() {
  local kind path
  if [[ ! -f "$1" ]]; then return 0; fi
  while IFS=' ' read -r kind path; do
    case "$kind" in
      file | link | dir | unit) printf '%s %s\n' "$kind" "$path" ;;
      *) ;;
    esac
  done <"$1"
}

# essaim_pids VENV: the ids of the running processes started from that environment.
essaim_pids() {
  local pid cmd
  while read -r pid cmd; do
    if [[ "$cmd" == *"$1/bin/"* && "$pid" != "$$" ]]; then printf '%s\n' "$pid"; fi
  done < <(ps -axo pid=,command= 2>/dev/null)
}
# <<< shared: common

# >>> shared: uninstall-core (the same in linux/uninstall.sh and macos/uninstall.sh)
OPT_KEEP_DATA=0

parse_uninstall_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --keep-data) OPT_KEEP_DATA=1 ;;
      --dry-run) DRY_RUN=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      *) die "unknown option: $1 (see --help)" ;;
    esac
    shift
  done
}

# stop_essaim: ends the processes running from essaim's environment: SIGTERM, SIGKILL after 10 s.
stop_essaim() {
  local pid pids=() waited=0
  while IFS= read -r pid; do pids+=("$pid"); done < <(essaim_pids "$VENV")
  if [[ ${#pids[@]} -eq 0 ]]; then return 0; fi
  say "stopping essaim (process ${pids[*]})"
  run kill "${pids[@]}" 2>/dev/null || true
  if [[ $DRY_RUN == 1 ]]; then return 0; fi
  while [[ -n "$(essaim_pids "$VENV")" && $waited -lt 10 ]]; do
    sleep 1
    waited=$((waited + 1))
  done
  pids=()
  while IFS= read -r pid; do pids+=("$pid"); done < <(essaim_pids "$VENV")
  if [[ ${#pids[@]} -gt 0 ]]; then kill -9 "${pids[@]}" 2>/dev/null || true; fi
}

# is_user_data DIR: true for the folders that hold the volunteer's own data.
is_user_data() {
  [[ "$1" == "$DATA_DIR" || "$1" == "$CONFIG_DIR" || "$1" == "$CACHE_DIR" || "$1" == "$STATE_DIR" ]]
}

uninstall_essaim() {
  local kind path dir dirs=() kept=()
  if [[ $DRY_RUN == 1 ]]; then say "dry run: nothing will be changed"; fi
  if [[ ! -f "$MANIFEST" && ! -d "$VENV" ]]; then say "no essaim installation found in $DATA_DIR: removing what is left of one"; fi
  while IFS=' ' read -r kind path; do
    if [[ "$kind" == unit ]]; then unregister_service "$path"; fi
  done < <(read_manifest "$MANIFEST"; known_paths)
  stop_essaim
  while IFS=' ' read -r kind path; do
    case "$kind" in
      file) if [[ -f "$path" || -L "$path" ]]; then run rm -f "$path"; fi ;;
      link) if [[ -L "$path" ]]; then run rm -f "$path"; fi ;;
      dir) dirs+=("$path") ;;
      *) ;;
    esac
  done < <(read_manifest "$MANIFEST"; known_paths)
  if [[ -d "$VENV" ]]; then
    say "removing the Python environment $VENV"
    run rm -rf "$VENV"
  fi
  if [[ $OPT_KEEP_DATA == 1 ]]; then
    # a later uninstall still needs to know which folders the installer created
    if [[ -f "$MANIFEST" && $DRY_RUN == 0 ]]; then
      grep '^dir ' "$MANIFEST" >"$MANIFEST.tmp" || true
      mv -f "$MANIFEST.tmp" "$MANIFEST"
    fi
    for dir in "$DATA_DIR" "$CONFIG_DIR" "$CACHE_DIR" "$STATE_DIR"; do
      if [[ -d "$dir" ]]; then kept+=("$dir"); fi
    done
  else
    for dir in "$DATA_DIR" "$CONFIG_DIR" "$CACHE_DIR" "$STATE_DIR"; do
      if [[ -d "$dir" ]]; then
        say "removing $dir"
        run rm -rf "$dir"
      fi
    done
  fi
  # the folders the installer created, deepest first, when nothing else lives in them
  while IFS= read -r dir; do
    if [[ $OPT_KEEP_DATA == 1 ]] && is_user_data "$dir"; then continue; fi
    if [[ -d "$dir" && -z "$(ls -A "$dir" 2>/dev/null)" ]]; then run rmdir "$dir"; fi
  done < <(if [[ ${#dirs[@]} -gt 0 ]]; then printf '%s\n' "${dirs[@]}" | awk '!seen[$0]++ { print length($0) "\t" $0 }' | LC_ALL=C sort -rn | cut -f 2-; fi)
  if [[ ${#kept[@]} -gt 0 ]]; then
    say "essaim is removed; kept your data in: ${kept[*]}"
  else
    say "essaim is removed"
  fi
}
# <<< shared: uninstall-core

# >>> shared: macos-paths (the same in macos/install.sh and macos/uninstall.sh)
# The folders platformdirs (which essaim uses) picks on macOS; it takes XDG_* variables first.
# shellcheck disable=SC2034 # each script uses some of these paths
macos_paths() {
  DATA_DIR="$HOME/Library/Application Support/essaim"
  CONFIG_DIR=$DATA_DIR
  CACHE_DIR="$HOME/Library/Caches/essaim"
  if [[ -n "${XDG_DATA_HOME:-}" ]]; then DATA_DIR="$XDG_DATA_HOME/essaim"; fi
  if [[ -n "${XDG_CONFIG_HOME:-}" ]]; then CONFIG_DIR="$XDG_CONFIG_HOME/essaim"; fi
  if [[ -n "${XDG_CACHE_HOME:-}" ]]; then CACHE_DIR="$XDG_CACHE_HOME/essaim"; fi
  STATE_DIR="$HOME/Library/Logs/essaim"
  VENV="$DATA_DIR/venv"
  MANIFEST="$DATA_DIR/installed-files.txt"
  BIN_DIR="$HOME/.local/bin"
  LABEL=org.essaim.essaim
  AGENT_PLIST="$HOME/Library/LaunchAgents/$LABEL.plist"
  APP_DIR="$HOME/Applications/essaim.app"
}

# unregister_service LABEL: stops the LaunchAgent and unloads it from this login session.
unregister_service() {
  if command -v launchctl >/dev/null 2>&1; then
    run launchctl bootout "gui/$(id -u)/$1" >/dev/null 2>&1 || true
  fi
}
# <<< shared: macos-paths

# known_paths: what install.sh makes, for an install whose manifest is lost.
known_paths() {
  printf '%s\n' "file $AGENT_PLIST" "file $APP_DIR/Contents/Info.plist" "file $APP_DIR/Contents/MacOS/essaim" \
    "file $APP_DIR/Contents/Resources/essaim.icns" "file $DATA_DIR/uninstall.sh" "unit $LABEL" \
    "dir $APP_DIR" "dir $APP_DIR/Contents" "dir $APP_DIR/Contents/MacOS" "dir $APP_DIR/Contents/Resources"
  if [[ -L "$BIN_DIR/essaim" && "$(readlink "$BIN_DIR/essaim")" == "$VENV/bin/essaim" ]]; then
    printf '%s\n' "link $BIN_DIR/essaim"
  fi
}

main() {
  parse_uninstall_args "$@"
  macos_paths
  uninstall_essaim
}

if [[ "${ESSAIM_INSTALLER_LIB:-0}" != 1 ]]; then main "$@"; fi
