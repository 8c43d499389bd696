#!/usr/bin/env bash
# Installs essaim for the current user on macOS: a Python environment in ~/Library/Application
# Support/essaim with PyTorch (its Apple silicon build uses the GPU through MPS), an `essaim`
# launcher in ~/.local/bin, an essaim app in ~/Applications, and a launchd LaunchAgent that starts
# the tray (or, with --headless, `essaim run --headless`) at login. Running it again changes nothing;
# uninstall.sh removes everything it made, listed in the data folder's installed-files.txt.
#
#   bash install.sh [--wheel FILE.whl] [--coordinator HOST:PORT] [--headless] ...   (--help for all)
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: install.sh [options]

Installs essaim for the current user and starts it at each login.

  --wheel FILE.whl         install essaim from this wheel instead of the package index
  --version X.Y.Z          the essaim release to take from the package index (default: the newest)
  --upgrade                take the newest essaim from the package index even when one is installed
  --coordinator HOST:PORT  the coordinator to join, written to essaim's config.toml
  --headless               run `essaim run --headless` at login, without a menu bar icon
  --tray                   run the menu bar (tray) app at login (the default)
  --no-autostart           do not start essaim at login
  --no-menu                do not add the essaim app to ~/Applications
  --no-start               do not start essaim now
  --python PATH            the Python (3.11 or newer) to build the environment with   [ESSAIM_PYTHON]
  --device auto|mps|cpu    which PyTorch build to use (default: mps on Apple silicon) [ESSAIM_DEVICE]
  --torch-spec SPEC        the PyTorch requirement, e.g. 'torch==2.13.0' (default: torch)
                                                                                        [ESSAIM_TORCH_SPEC]
  --torch-index URL|none   the index PyTorch comes from (default: none, pip's own configuration)
                                                                                   [ESSAIM_TORCH_INDEX_URL]
  --reinstall-torch        replace the PyTorch already in essaim's environment
  --pip-args 'ARGS'        extra options for every pip call (default: --no-cache-dir)  [ESSAIM_PIP_ARGS]
  --dry-run                show what would be done, and change nothing
  -h, --help               show this help

Remove essaim with uninstall.sh (kept as ~/Library/Application Support/essaim/uninstall.sh).
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

# >>> shared: install-core (the same in linux/install.sh and macos/install.sh)
ENTRIES=()       # manifest entries of this run
ESSAIM_UPDATED=0 # 1 when this run installed or replaced essaim itself
LAST_WRITE=0     # 1 when the last put_file changed the file

OPT_WHEEL=
OPT_VERSION=
OPT_UPGRADE=0
OPT_COORDINATOR=
OPT_MODE=auto
OPT_MENU=1
OPT_START=1
OPT_PYTHON=${ESSAIM_PYTHON:-}
OPT_DEVICE=${ESSAIM_DEVICE:-auto}
OPT_TORCH_SPEC=${ESSAIM_TORCH_SPEC:-}
OPT_TORCH_INDEX=${ESSAIM_TORCH_INDEX_URL:-}
OPT_REINSTALL_TORCH=0
OPT_PIP_ARGS=${ESSAIM_PIP_ARGS---no-cache-dir}
PIP_ARGS=()

parse_args() {
  local opt val
  while [[ $# -gt 0 ]]; do
    opt=$1
    val=
    case "$opt" in
      --*=*)
        val=${opt#*=}
        opt=${opt%%=*}
        shift
        ;;
      --wheel | --version | --coordinator | --python | --device | --torch-spec | --torch-index | --pip-args)
        if [[ $# -lt 2 ]]; then die "$opt needs a value (see --help)"; fi
        val=$2
        shift 2
        ;;
      *) shift ;;
    esac
    case "$opt" in
      --wheel) OPT_WHEEL=$val ;;
      --version) OPT_VERSION=$val ;;
      --upgrade) OPT_UPGRADE=1 ;;
      --coordinator) OPT_COORDINATOR=$val ;;
      --headless) OPT_MODE=headless ;;
      --tray) OPT_MODE=tray ;;
      --no-autostart) OPT_MODE=none ;;
      --no-menu) OPT_MENU=0 ;;
      --no-start) OPT_START=0 ;;
      --python) OPT_PYTHON=$val ;;
      --device) OPT_DEVICE=$val ;;
      --torch-spec) OPT_TORCH_SPEC=$val ;;
      --torch-index) OPT_TORCH_INDEX=$val ;;
      --reinstall-torch) OPT_REINSTALL_TORCH=1 ;;
      --pip-args) OPT_PIP_ARGS=$val ;;
      --dry-run) DRY_RUN=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      *) die "unknown option: $opt (see --help)" ;;
    esac
  done
  if [[ -n "$OPT_COORDINATOR" ]] && ! valid_address "$OPT_COORDINATOR"; then
    die "--coordinator wants HOST:PORT (e.g. coordinator.example.org:50051), not '$OPT_COORDINATOR'"
  fi
  if [[ -n "$OPT_WHEEL" ]]; then
    if [[ -n "$OPT_VERSION" ]]; then die "give either --wheel or --version, not both"; fi
    if [[ ! -f "$OPT_WHEEL" || "$OPT_WHEEL" != *.whl ]]; then die "--wheel: $OPT_WHEEL is not a wheel file (FILE.whl)"; fi
    OPT_WHEEL="$(cd "$(dirname "$OPT_WHEEL")" && pwd)/$(basename "$OPT_WHEEL")"
  fi
  read -r -a PIP_ARGS <<<"$OPT_PIP_ARGS" || true
}

# valid_address HOST:PORT: a host name, an IPv4 address or a bracketed IPv6 address, and a port.
valid_address() {
  local port=${1##*:}
  [[ "$1" =~ ^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$ ]] &&
    [[ $((10#$port)) -ge 1 && $((10#$port)) -le 65535 ]]
}

record() { ENTRIES+=("$1 $2"); }

is_entry() {
  local entry
  for entry in ${ENTRIES[@]+"${ENTRIES[@]}"}; do
    if [[ "$entry" == "$1" ]]; then return 0; fi
  done
  return 1
}

# was_recorded KIND PATH: true when the previous run's manifest lists that entry.
was_recorded() {
  local line
  while IFS= read -r line; do
    if [[ "$line" == "$1 $2" ]]; then return 0; fi
  done < <(read_manifest "$MANIFEST")
  return 1
}

# ensure_dir DIR: creates DIR and its missing parents, recording each folder it creates.
ensure_dir() {
  local dir=$1 missing=()
  while [[ ! -d "$dir" ]] && ! is_entry "dir $dir"; do
    missing=("$dir" ${missing[@]+"${missing[@]}"})
    dir=$(dirname "$dir")
  done
  for dir in ${missing[@]+"${missing[@]}"}; do
    run mkdir "$dir"
    record dir "$dir"
  done
}

# write_if_changed MODE PATH < CONTENT: replaces PATH only when the content differs, so that a
# second run leaves every file (and its modification time) as it was.
write_if_changed() {
  local mode=$1 path=$2 tmp
  LAST_WRITE=0
  if [[ $DRY_RUN == 1 ]]; then
    say "would write $path (mode $mode):"
    sed 's/^/    | /'
    return 0
  fi
  ensure_dir "$(dirname "$path")"
  tmp=$(mktemp "$path.XXXXXX")
  cat >"$tmp"
  if [[ -f "$path" && ! -L "$path" ]] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    chmod "$mode" "$path"
  else
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    LAST_WRITE=1
    say "wrote $path"
  fi
}

# put_file MODE PATH < CONTENT: writes a file the installer owns (listed in the manifest).
put_file() {
  record file "$2"
  write_if_changed "$1" "$2"
}

# put_copy MODE SOURCE PATH: copies a (possibly binary) file the installer owns.
put_copy() {
  if [[ $DRY_RUN == 1 ]]; then
    record file "$3"
    say "would copy $2 to $3"
    return 0
  fi
  put_file "$1" "$3" <"$2"
}

# put_link TARGET LINK: a symbolic link, unless LINK is someone else's file.
put_link() {
  local target=$1 link=$2
  if [[ -L "$link" && "$(readlink "$link")" == "$target" ]]; then
    record link "$link"
    return 0
  fi
  if [[ -e "$link" || -L "$link" ]] && ! was_recorded link "$link"; then
    warn "$link exists and is not essaim's: left as it is (essaim itself is $target)"
    return 0
  fi
  ensure_dir "$(dirname "$link")"
  run ln -sfn "$target" "$link"
  record link "$link"
}

# remove_stale: removes what an earlier run made and this one no longer needs (e.g. the tray's
# autostart entry after a switch to --headless), and keeps the folders earlier runs created.
remove_stale() {
  local kind path
  while IFS=' ' read -r kind path; do
    if is_entry "$kind $path"; then continue; fi
    case "$kind" in
      unit) unregister_service "$path" ;;
      dir) if [[ -d "$path" ]]; then record dir "$path"; fi ;;
      *) ;;
    esac
  done < <(read_manifest "$MANIFEST")
  while IFS=' ' read -r kind path; do
    if is_entry "$kind $path"; then continue; fi
    case "$kind" in
      file) if [[ -f "$path" ]]; then run rm -f "$path" && say "removed $path (no longer needed)"; fi ;;
      link) if [[ -L "$path" ]]; then run rm -f "$path"; fi ;;
      *) ;;
    esac
  done < <(read_manifest "$MANIFEST")
}

# keep_manifest_on_failure: the EXIT trap; after a failed run, the manifest keeps both the old
# entries and what this run made, so that uninstall.sh still finds everything.
keep_manifest_on_failure() {
  local status=$? line
  if [[ $status -ne 0 && $DRY_RUN == 0 && -d "$(dirname "$MANIFEST")" ]]; then
    while IFS= read -r line; do ENTRIES+=("$line"); done < <(read_manifest "$MANIFEST")
    write_manifest >/dev/null 2>&1 || true
  fi
}

write_manifest() {
  if [[ $DRY_RUN == 1 ]]; then
    say "would list ${#ENTRIES[@]} installed paths in $MANIFEST"
    return 0
  fi
  {
    printf '# essaim: what the installer made; uninstall.sh reads this list\n'
    printf '%s\n' ${ENTRIES[@]+"${ENTRIES[@]}"} | LC_ALL=C sort -u
  } | write_if_changed 644 "$MANIFEST"
}

# find_python: sets PYTHON to a Python 3.11+ that can make virtual environments.
find_python() {
  local candidate path version no_venv='' too_old='' candidates=()
  if [[ -n "$OPT_PYTHON" ]]; then
    candidates=("$OPT_PYTHON")
  else
    while IFS= read -r candidate; do candidates+=("$candidate"); done < <(python_candidates)
  fi
  for candidate in ${candidates[@]+"${candidates[@]}"}; do
    path=$(command -v "$candidate" 2>/dev/null) || continue
    version=$("$path" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
    if ! "$path" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      too_old="$path ($version)"
      continue
    fi
    if ! "$path" -c 'import ensurepip, venv' >/dev/null 2>&1; then
      no_venv=$path
      continue
    fi
    PYTHON=$path
    say "using Python $version at $PYTHON"
    return 0
  done
  if [[ -n "$no_venv" ]]; then
    die "$no_venv cannot make virtual environments (its venv/ensurepip module is missing). $(venv_hint "$no_venv")"
  fi
  if [[ -n "$OPT_PYTHON" ]]; then die "--python $OPT_PYTHON: not a Python 3.11 or newer. $(python_hint)"; fi
  die "essaim needs Python 3.11 or newer${too_old:+, and found only $too_old}. $(python_hint)"
}

# sha256_of FILE
sha256_of() {
  "$PYTHON" -c 'import hashlib, sys; print(hashlib.file_digest(open(sys.argv[1], "rb"), "sha256").hexdigest())' "$1"
}

pip_install() {
  run "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" ${PIP_ARGS[@]+"${PIP_ARGS[@]}"}
}

ensure_venv() {
  if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "using the Python environment $VENV"
    return 0
  fi
  if [[ -e "$VENV" ]]; then
    warn "$VENV does not work any more (was its Python removed?): making it again"
    run rm -rf "$VENV"
  fi
  ensure_dir "$(dirname "$VENV")"
  say "creating the Python environment $VENV"
  run "$PYTHON" -m venv "$VENV"
}

# install_torch: the PyTorch build chosen by detect_device (TORCH_SPEC from TORCH_INDEX), unless the
# environment already has a working PyTorch.
install_torch() {
  local have index_args=()
  if have=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    if [[ $OPT_REINSTALL_TORCH == 0 ]]; then
      say "PyTorch $have is already installed: keeping it (--reinstall-torch replaces it)"
      return 0
    fi
    run "$VENV/bin/python" -m pip uninstall --yes --quiet torch
  fi
  if [[ -n "$TORCH_INDEX" && "$TORCH_INDEX" != none ]]; then index_args=(--index-url "$TORCH_INDEX"); fi
  say "installing PyTorch for $DEVICE_LABEL: $TORCH_SPEC${index_args[*]:+ from $TORCH_INDEX} (this can take a while)"
  pip_install ${index_args[@]+"${index_args[@]}"} "$TORCH_SPEC"
}

# install_essaim: essaim from the wheel or the package index; skipped when the same wheel (by its
# SHA-256) or the same requirement is already installed.
install_essaim() {
  local req stamp stamp_file="$VENV/essaim-install.txt" had=0
  if [[ -n "$OPT_WHEEL" ]]; then
    req="${OPT_WHEEL}[$EXTRAS]"
    stamp="wheel $(sha256_of "$OPT_WHEEL") [$EXTRAS]"
  else
    req="essaim[$EXTRAS]${OPT_VERSION:+==$OPT_VERSION}"
    stamp="index $req"
  fi
  if "$VENV/bin/python" -c 'import essaim' >/dev/null 2>&1; then had=1; fi
  if [[ $had == 1 && $OPT_UPGRADE == 0 && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
    say "essaim is up to date in $VENV"
    return 0
  fi
  say "installing essaim from ${OPT_WHEEL:-the package index}"
  if [[ $OPT_UPGRADE == 1 ]]; then pip_install --upgrade "$req"; else pip_install "$req"; fi
  if [[ -n "$OPT_WHEEL" && $had == 1 ]]; then
    # pip keeps an installed essaim of the same version: put this wheel's files in place
    pip_install --force-reinstall --no-deps "$OPT_WHEEL"
  fi
  if [[ $DRY_RUN == 0 ]]; then printf '%s\n' "$stamp" >"$stamp_file"; fi
  ESSAIM_UPDATED=1
}

verify_essaim() {
  local out
  if [[ $DRY_RUN == 1 ]]; then return 0; fi
  if ! out=$("$VENV/bin/essaim" --version 2>&1); then
    die "essaim was installed in $VENV but does not start: $out"
  fi
  say "installed $out"
}

# find_asset NAME...: the first of these files found next to this installer (installers/assets), or
# among the installed package's assets (essaim/client/assets).
find_asset() {
  local name dir=''
  for name in "$@"; do
    if [[ -n "$ASSETS_DIR" && -f "$ASSETS_DIR/$name" ]]; then
      printf '%s\n' "$ASSETS_DIR/$name"
      return 0
    fi
  done
  if [[ -x "$VENV/bin/python" ]]; then
    dir=$("$VENV/bin/python" -c 'import importlib.util, os; print(os.path.join(importlib.util.find_spec("essaim.client").submodule_search_locations[0], "assets"))' 2>/dev/null) || dir=''
  fi
  for name in "$@"; do
    if [[ -n "$dir" && -f "$dir/$name" ]]; then
      printf '%s\n' "$dir/$name"
      return 0
    fi
  done
  return 1
}

# set_coordinator ADDRESS: sets [coordinator] address in essaim's config.toml, keeping the rest of
# the file (comments and other settings) as it is.
set_coordinator() {
  local file="$CONFIG_DIR/config.toml" result
  if [[ $DRY_RUN == 1 ]]; then
    say "would set [coordinator] address = \"$1\" in $file"
    return 0
  fi
  ensure_dir "$CONFIG_DIR"
  result=$(write_coordinator_address "$file" "$1") || die "$result"
  if [[ "$result" == changed ]]; then say "the coordinator is $1 (in $file)"; fi
}

# write_coordinator_address FILE ADDRESS: prints "changed" or "unchanged", or why it could not.
write_coordinator_address() {
  "$PYTHON" - "$1" "$2" <<'PY' 2>&1
import os, re, sys, tempfile, tomllib

path, address = sys.argv[1], sys.argv[2]
try:
    with open(path, encoding="utf-8") as f:
        text = f.read()
except FileNotFoundError:
    text = ""
try:
    data = tomllib.loads(text)
except tomllib.TOMLDecodeError as exc:
    sys.exit(f"{path} is not valid TOML ({exc}): fix or delete it, then run the installer again")
table = data.get("coordinator")
if isinstance(table, dict) and table.get("address") == address:
    print("unchanged")
    sys.exit(0)
line = f'address = "{address}"\n'
lines = text.splitlines(keepends=True)
if lines and not lines[-1].endswith("\n"):
    lines[-1] += "\n"
start = next((i for i, s in enumerate(lines) if re.match(r"\s*\[\s*coordinator\s*\]\s*(#.*)?$", s)), None)
if start is None:
    if lines and lines[-1].strip():
        lines.append("\n")
    lines += ["[coordinator]\n", line]
else:
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines))
    key = next((i for i in range(start + 1, end) if re.match(r"\s*address\s*=", lines[i])), None)
    if key is None:
        lines.insert(start + 1, line)
    else:
        lines[key] = line
new = "".join(lines)
try:
    ok = tomllib.loads(new).get("coordinator", {}).get("address") == address
except (tomllib.TOMLDecodeError, AttributeError):
    ok = False
if not ok:
    sys.exit(f'could not set the coordinator in {path}: add [coordinator] address = "{address}" there by hand')
mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o600
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".config.toml.")
with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(new)
os.chmod(tmp, mode)
os.replace(tmp, path)
print("changed")
PY
}
# <<< shared: install-core

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

SCRIPT_DIR=''
if [[ -n "${BASH_SOURCE[0]:-}" && -f "${BASH_SOURCE[0]}" ]]; then
  SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fi
ASSETS_DIR=''
if [[ -n "$SCRIPT_DIR" && -d "$SCRIPT_DIR/../assets" ]]; then ASSETS_DIR=$(cd "$SCRIPT_DIR/../assets" && pwd); fi

python_candidates() {
  local version prefix
  printf '%s\n' python3.11 python3.12 python3.13 python3.14
  for version in 3.11 3.12 3.13 3.14; do
    for prefix in /opt/homebrew/bin /usr/local/bin "/Library/Frameworks/Python.framework/Versions/$version/bin"; do
      printf '%s\n' "$prefix/python$version"
    done
  done
  # /usr/bin/python3 is a stub that opens an install dialog until Apple's command line tools are there
  if [[ "$(command -v python3 2>/dev/null || true)" != /usr/bin/python3 ]] || xcode-select -p >/dev/null 2>&1; then
    printf '%s\n' python3
  fi
}

python_hint() {
  printf '%s' "Install Python 3.12 from https://www.python.org/downloads/macos/ (the universal2 installer) or with Homebrew (brew install python@3.12), then run this again."
}

venv_hint() {
  printf '%s' "Reinstall Python from python.org or Homebrew, or pass another one with --python."
}

# detect_device: sets DEVICE, DEVICE_LABEL, TORCH_SPEC, TORCH_INDEX and EXTRAS.
detect_device() {
  local on_mac=0 machine
  if [[ "$(uname -s)" == Darwin ]]; then on_mac=1; fi
  DEVICE=$OPT_DEVICE
  if [[ "$DEVICE" == auto ]]; then
    DEVICE=cpu
    if [[ "$(uname -m)" == arm64 ]]; then
      DEVICE=mps
    elif [[ $on_mac == 1 && "$(sysctl -n hw.optional.arm64 2>/dev/null || true)" == 1 ]]; then
      die "this terminal runs under Rosetta on an Apple silicon Mac: run the installer natively (arch -arm64 bash install.sh) so that PyTorch can use the GPU"
    fi
  fi
  case "$DEVICE" in
    mps)
      DEVICE_LABEL="the Apple silicon GPU (MPS)"
      if [[ $on_mac == 1 ]]; then
        machine=$("$PYTHON" -c 'import platform; print(platform.machine())')
        if [[ "$machine" != arm64 ]]; then
          die "$PYTHON is an $machine build: PyTorch needs an arm64 Python on Apple silicon (python.org's universal2 installer, or Homebrew in /opt/homebrew)"
        fi
      fi
      ;;
    cpu)
      DEVICE_LABEL="the CPU"
      if [[ $on_mac == 1 && "$(uname -m)" != arm64 && -z "$OPT_TORCH_SPEC" ]]; then
        die "PyTorch publishes no builds for Intel Macs after 2.2, and essaim needs 2.3 or newer: essaim cannot train on this Mac (--torch-spec tries a PyTorch you name)"
      fi
      ;;
    *) die "--device must be auto, mps or cpu on macOS, not '$DEVICE'" ;;
  esac
  TORCH_INDEX=${OPT_TORCH_INDEX:-none} # PyPI's macOS wheels carry the MPS backend
  TORCH_SPEC=${OPT_TORCH_SPEC:-torch}
  EXTRAS=tray
  say "PyTorch build: $DEVICE_LABEL"
}

xml_escape() {
  # the replacements are quoted: bash 5.2 would otherwise read "&" in them as the matched text
  local s=$1 amp='&amp;' lt='&lt;' gt='&gt;'
  s=${s//&/"$amp"}
  s=${s//</"$lt"}
  s=${s//>/"$gt"}
  printf '%s' "$s"
}

sh_quote() {
  printf "'%s'" "${1//\'/\'\\\'\'}"
}

# render_agent_plist ESSAIM MODE(tray|headless): the LaunchAgent that starts essaim at login.
render_agent_plist() {
  local log
  log=$(xml_escape "$STATE_DIR/launchd.log")
  cat <<PLIST
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>$LABEL</string>
  <key>ProgramArguments</key>
  <array>
    <string>$(xml_escape "$1")</string>
PLIST
  if [[ "$2" == headless ]]; then
    printf '    <string>run</string>\n    <string>--headless</string>\n'
  fi
  cat <<PLIST
  </array>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ThrottleInterval</key>
  <integer>30</integer>
PLIST
  if [[ "$2" == headless ]]; then
    printf '  <key>ProcessType</key>\n  <string>Background</string>\n'
  else
    printf '  <key>ProcessType</key>\n  <string>Interactive</string>\n'
    printf '  <key>LimitLoadToSessionType</key>\n  <string>Aqua</string>\n'
  fi
  cat <<PLIST
  <key>StandardOutPath</key>
  <string>$log</string>
  <key>StandardErrorPath</key>
  <string>$log</string>
  <key>EnvironmentVariables</key>
  <dict>
    <key>PYTHONUNBUFFERED</key>
    <string>1</string>
  </dict>
</dict>
</plist>
PLIST
}

# render_app_plist: Info.plist of ~/Applications/essaim.app, the menu bar app without a Dock icon.
render_app_plist() {
  cat <<'PLIST'
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>CFBundleDevelopmentRegion</key>
  <string>en</string>
  <key>CFBundleDisplayName</key>
  <string>essaim</string>
  <key>CFBundleExecutable</key>
  <string>essaim</string>
  <key>CFBundleIconFile</key>
  <string>essaim</string>
  <key>CFBundleIdentifier</key>
  <string>org.essaim.app</string>
  <key>CFBundleInfoDictionaryVersion</key>
  <string>6.0</string>
  <key>CFBundleName</key>
  <string>essaim</string>
  <key>CFBundlePackageType</key>
  <string>APPL</string>
  <key>CFBundleShortVersionString</key>
  <string>1.0</string>
  <key>CFBundleVersion</key>
  <string>1</string>
  <key>LSMinimumSystemVersion</key>
  <string>11.0</string>
  <key>LSUIElement</key>
  <true/>
  <key>NSHighResolutionCapable</key>
  <true/>
</dict>
</plist>
PLIST
}

# render_app_launcher ESSAIM: the app's executable, which starts the tray.
render_app_launcher() {
  printf '#!/bin/sh\n# Starts the essaim tray; made by the essaim installer.\nexec %s "$@"\n' "$(sh_quote "$1")"
}

install_menu_entry() {
  local icns png tmp
  put_file 644 "$APP_DIR/Contents/Info.plist" < <(render_app_plist)
  put_file 755 "$APP_DIR/Contents/MacOS/essaim" < <(render_app_launcher "$VENV/bin/essaim")
  if icns=$(find_asset essaim.icns); then
    put_copy 644 "$icns" "$APP_DIR/Contents/Resources/essaim.icns"
  elif png=$(find_asset essaim.png icon.png training.png) && command -v sips >/dev/null 2>&1 && [[ $DRY_RUN == 0 ]]; then
    tmp=$(mktemp -d)
    if sips -s format icns "$png" --out "$tmp/essaim.icns" >/dev/null 2>&1; then
      put_copy 644 "$tmp/essaim.icns" "$APP_DIR/Contents/Resources/essaim.icns"
    fi
    rm -rf "$tmp"
  else
    warn "no essaim icon found: the app gets the default icon"
  fi
  say "essaim is in your Applications folder ($APP_DIR)"
}

register_autostart() {
  case "$MODE" in
    tray | headless)
      ensure_dir "$STATE_DIR"
      put_file 644 "$AGENT_PLIST" < <(render_agent_plist "$VENV/bin/essaim" "$MODE")
      load_agent "$LAST_WRITE"
      ;;
    none) say "not starting essaim at login (--no-autostart)" ;;
  esac
}

# load_agent CHANGED: (re)loads the LaunchAgent into this login session.
load_agent() {
  local domain
  record unit "$LABEL"
  if ! command -v launchctl >/dev/null 2>&1; then
    say "launchctl is not here: essaim starts at the next login"
    return 0
  fi
  domain="gui/$(id -u)"
  if launchctl print "$domain/$LABEL" >/dev/null 2>&1; then
    if [[ "$1" == 1 || $ESSAIM_UPDATED == 1 ]]; then
      run launchctl bootout "$domain/$LABEL" 2>/dev/null || true
      run launchctl bootstrap "$domain" "$AGENT_PLIST" || warn "could not restart essaim now: it restarts at the next login"
    fi
  elif [[ $OPT_START == 1 ]]; then
    run launchctl bootstrap "$domain" "$AGENT_PLIST" || warn "could not start essaim now (no desktop session?): it starts at the next login"
  fi
  say "essaim starts at each login (LaunchAgent $AGENT_PLIST; log in $STATE_DIR)"
}

main() {
  parse_args "$@"
  if [[ "$(uname -s)" != Darwin ]]; then
    if [[ $DRY_RUN == 0 ]]; then
      die "this installer is for macOS: on Linux use installers/linux/install.sh, on Windows installers/windows/install.ps1"
    fi
    say "dry run on $(uname -s): showing what would happen on a Mac"
  fi
  macos_paths
  trap keep_manifest_on_failure EXIT
  MODE=$OPT_MODE
  if [[ "$MODE" == auto ]]; then MODE=tray; fi
  if [[ $DRY_RUN == 1 ]]; then say "dry run: nothing will be changed"; fi
  find_python
  detect_device
  ensure_venv
  install_torch
  install_essaim
  verify_essaim
  put_link "$VENV/bin/essaim" "$BIN_DIR/essaim"
  local uninstaller="uninstall.sh from where you got this installer"
  if [[ -n "$SCRIPT_DIR" && -f "$SCRIPT_DIR/uninstall.sh" ]]; then
    put_copy 755 "$SCRIPT_DIR/uninstall.sh" "$DATA_DIR/uninstall.sh"
    uninstaller="bash '$DATA_DIR/uninstall.sh'"
  fi
  if [[ $OPT_MENU == 1 ]]; then install_menu_entry; fi
  register_autostart
  if [[ -n "$OPT_COORDINATOR" ]]; then set_coordinator "$OPT_COORDINATOR"; fi
  remove_stale
  write_manifest
  case ":$PATH:" in
    *":$BIN_DIR:"*) ;;
    *) say "$BIN_DIR is not on your PATH: add it (in ~/.zprofile: export PATH=\"\$HOME/.local/bin:\$PATH\") to type essaim" ;;
  esac
  say "done. Remove essaim with $uninstaller (--keep-data keeps your settings and identity)"
}

if [[ "${ESSAIM_INSTALLER_LIB:-0}" != 1 ]]; then main "$@"; fi
