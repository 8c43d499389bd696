#!/usr/bin/env bash
# Installs essaim for the current user on Linux: a Python environment in the user data folder with the
# PyTorch build that fits this machine (NVIDIA CUDA, AMD ROCm or CPU), an `essaim` launcher in
# ~/.local/bin, a menu entry with its icon, and a start at login (the tray through XDG autostart, or
# a systemd user service with --headless). Running it again changes nothing; uninstall.sh removes
# everything it made, listed in the data folder's installed-files.txt.
#
#   bash install.sh [--wheel FILE.whl] [--coordinator HOST:PORT] [--headless] ...   (--help for all)
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: install.sh [options]

Installs essaim for the current user and starts it with each session.

  --wheel FILE.whl         install essaim from this wheel instead of the package index
  --version X.Y.Z          the essaim release to take from the package index (default: the newest)
  --upgrade                take the newest essaim from the package index even when one is installed
  --coordinator HOST:PORT  the coordinator to join, written to essaim's config.toml
  --headless               start essaim at boot as a systemd user service, without a tray icon
  --tray                   start the tray icon at desktop login (the default when a display is present)
  --no-autostart           do not start essaim with the session
  --no-menu                do not add the application menu entry
  --no-start               do not start essaim now
  --python PATH            the Python (3.11 or newer) to build the environment with   [ESSAIM_PYTHON]
  --device auto|cuda|rocm|cpu
                           which PyTorch build to install (default: detected)         [ESSAIM_DEVICE]
  --torch-spec SPEC        the PyTorch requirement, e.g. 'torch==2.13.0' (default: torch)
                                                                                        [ESSAIM_TORCH_SPEC]
  --torch-index URL|none   the index PyTorch comes from (default: PyTorch's index for the
                           detected build; none: pip's own configuration)           [ESSAIM_TORCH_INDEX_URL]
  --reinstall-torch        replace the PyTorch already in essaim's environment
  --pip-args 'ARGS'        extra options for every pip call (default: --no-cache-dir)  [ESSAIM_PIP_ARGS]
  --dry-run                show what would be done, and change nothing
  -h, --help               show this help

Remove essaim with uninstall.sh (kept as ~/.local/share/essaim/uninstall.sh).
EOF
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

# >>> shared: linux-paths (the same in linux/install.sh and linux/uninstall.sh)
# The folders follow the XDG base directory spec, as platformdirs (which essaim uses) does.
# shellcheck disable=SC2034 # each script uses some of these paths
linux_paths() {
  local data_home=${XDG_DATA_HOME:-$HOME/.local/share} config_home=${XDG_CONFIG_HOME:-$HOME/.config}
  DATA_DIR="$data_home/essaim"
  CONFIG_DIR="$config_home/essaim"
  CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/essaim"
  STATE_DIR="${XDG_STATE_HOME:-$HOME/.local/state}/essaim"
  VENV="$DATA_DIR/venv"
  MANIFEST="$DATA_DIR/installed-files.txt"
  BIN_DIR="$HOME/.local/bin"
  APPS_DIR="$data_home/applications"
  ICONS_DIR="$data_home/icons/hicolor"
  AUTOSTART_DIR="$config_home/autostart"
  UNIT_DIR="$config_home/systemd/user"
  UNIT=essaim.service
}

systemd_user_works() {
  command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1
}

# unregister_service UNIT: stops and disables a systemd user service.
unregister_service() {
  if systemd_user_works; then run systemctl --user disable --now "$1" >/dev/null 2>&1 || true; fi
  if [[ -L "$UNIT_DIR/default.target.wants/$1" ]]; then run rm -f "$UNIT_DIR/default.target.wants/$1"; fi
}
# <<< shared: linux-paths

SCRIPT_DIR=''
if [[ -n "${BASH_SOURCE[0]:-}" && -f "${BASH_SOURCE[0]}" ]]; then
  SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fi
ASSETS_DIR=''
if [[ -n "$SCRIPT_DIR" && -d "$SCRIPT_DIR/../assets" ]]; then ASSETS_DIR=$(cd "$SCRIPT_DIR/../assets" && pwd); fi

python_candidates() {
  printf '%s\n' python3.11 python3.12 python3.13 python3.14 python3
}

python_hint() {
  if command -v apt-get >/dev/null 2>&1; then
    printf '%s' "On Debian or Ubuntu: sudo apt install python3 python3-venv (Ubuntu 22.04 has 3.10: sudo apt install python3.11 python3.11-venv)."
  elif command -v dnf >/dev/null 2>&1; then
    printf '%s' "On Fedora: sudo dnf install python3.12."
  elif command -v pacman >/dev/null 2>&1; then
    printf '%s' "On Arch: sudo pacman -S python."
  elif command -v zypper >/dev/null 2>&1; then
    printf '%s' "On openSUSE: sudo zypper install python312."
  fi
  printf ' %s' "Or install one with uv (uv python install 3.12) or pyenv, then run this again with --python PATH."
}

venv_hint() {
  local version
  version=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
  if command -v apt-get >/dev/null 2>&1; then
    printf '%s' "Install it with: sudo apt install python${version}-venv"
  else
    printf '%s' "Install your distribution's venv package for Python $version, or pass another Python with --python."
  fi
}

# detect_device: sets DEVICE, DEVICE_LABEL, TORCH_SPEC, TORCH_INDEX and EXTRAS.
detect_device() {
  local gpu cuda tag rocm
  DEVICE=$OPT_DEVICE
  DEVICE_LABEL=
  if [[ "$DEVICE" == auto ]]; then
    DEVICE=cpu
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep '^GPU' >/dev/null; then
      DEVICE=cuda
    elif command -v rocminfo >/dev/null 2>&1 && rocminfo 2>/dev/null | grep -E 'Name:[[:space:]]+gfx' >/dev/null; then
      DEVICE=rocm
    elif [[ -d /opt/rocm && -e /dev/kfd ]]; then
      DEVICE=rocm
    fi
  fi
  TORCH_INDEX=https://download.pytorch.org/whl/cpu
  case "$DEVICE" in
    cuda)
      gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
      cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1 || true)
      tag=cu128 # the driver's CUDA version is unknown when --device cuda is forced without nvidia-smi
      if [[ -n "$cuda" ]]; then tag=$(cuda_tag "$cuda"); fi
      if [[ -z "$tag" ]]; then
        warn "the NVIDIA driver supports CUDA ${cuda:-(unknown)} only, and PyTorch needs 12.6 or newer: update the driver, then run this again with --reinstall-torch. Installing the CPU build for now."
        DEVICE=cpu
      else
        TORCH_INDEX=https://download.pytorch.org/whl/$tag
        DEVICE_LABEL="NVIDIA CUDA ($tag${gpu:+, $gpu})"
      fi
      ;;
    rocm)
      rocm=$(cat /opt/rocm/.info/version 2>/dev/null || true)
      TORCH_INDEX=https://download.pytorch.org/whl/rocm6.4
      DEVICE_LABEL="AMD ROCm (rocm6.4${rocm:+, ROCm $rocm found})"
      ;;
    cpu) ;;
    *) die "--device must be auto, cuda, rocm or cpu, not '$DEVICE'" ;;
  esac
  if [[ "$DEVICE" == cpu ]]; then
    TORCH_INDEX=https://download.pytorch.org/whl/cpu
    DEVICE_LABEL="the CPU (no NVIDIA or AMD GPU found)"
    if [[ "$OPT_DEVICE" == cpu ]]; then DEVICE_LABEL="the CPU"; fi
  fi
  if [[ -n "$OPT_TORCH_INDEX" ]]; then TORCH_INDEX=$OPT_TORCH_INDEX; fi
  TORCH_SPEC=${OPT_TORCH_SPEC:-torch}
  EXTRAS=tray
  if [[ "$DEVICE" == cuda ]]; then EXTRAS=tray,gpu; fi
  say "PyTorch build: $DEVICE_LABEL"
}

# cuda_tag X.Y: PyTorch's wheel variant for a driver that supports CUDA X.Y (empty if too old).
cuda_tag() {
  local major minor
  if [[ ! "$1" =~ ^([0-9]+)\.([0-9]+)$ ]]; then return 0; fi
  major=${BASH_REMATCH[1]}
  minor=${BASH_REMATCH[2]}
  if ((major >= 13)); then
    echo cu130
  elif ((major == 12 && minor >= 8)); then
    echo cu128
  elif ((major == 12 && minor >= 6)); then
    echo cu126
  fi
}

# desktop_exec_arg ARG: ARG quoted for a desktop entry's Exec key.
desktop_exec_arg() {
  local arg=$1
  if [[ "$arg" =~ ^[A-Za-z0-9_@+=:,./-]+$ ]]; then
    printf '%s' "$arg"
    return 0
  fi
  arg=${arg//\\/\\\\}
  arg=${arg//\"/\\\"}
  arg=${arg//\`/\\\`}
  arg=${arg//\$/\\\$}
  arg=${arg//%/%%}
  arg=${arg//\\/\\\\} # the desktop file's string escaping, on top of Exec's own
  printf '"%s"' "$arg"
}

# systemd_exec_arg PATH: the program's path quoted for a systemd unit's ExecStart (systemd expands
# no variables there, and runs no program whose path has quotes or backslashes).
systemd_exec_arg() {
  local arg=$1
  if [[ "$arg" =~ ^[A-Za-z0-9_@+=:,./-]+$ ]]; then
    printf '%s' "$arg"
    return 0
  fi
  printf '"%s"' "${arg//%/%%}"
}

# render_desktop_entry EXEC AUTOSTART(0|1): the menu entry, or the tray's autostart entry.
render_desktop_entry() {
  cat <<EOF
[Desktop Entry]
Type=Application
Version=1.4
Name=essaim
GenericName=Volunteer AI training
Comment=Lend this computer's idle time to fine-tune open language models
Exec=$1
Icon=essaim
Terminal=false
Categories=Network;
Keywords=volunteer;training;AI;swarm;
StartupNotify=false
EOF
  if [[ "$2" == 1 ]]; then
    printf '%s\n' 'X-GNOME-Autostart-enabled=true' 'X-GNOME-Autostart-Delay=10'
  fi
}

# render_unit ESSAIM: the systemd user service for headless machines.
render_unit() {
  cat <<EOF
[Unit]
Description=essaim volunteer training (headless)
Documentation=https://essaim.org

[Service]
Type=simple
ExecStart=$(systemd_exec_arg "$1") run --headless
Restart=on-failure
RestartSec=30
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=default.target
EOF
}

install_menu_entry() {
  local svg='' png='' size
  put_file 644 "$APPS_DIR/essaim.desktop" < <(render_desktop_entry "$(desktop_exec_arg "$VENV/bin/essaim")" 0)
  if svg=$(find_asset essaim.svg icon.svg); then put_copy 644 "$svg" "$ICONS_DIR/scalable/apps/essaim.svg"; fi
  # the tray's own picture stands in when this installer came without its assets folder
  if png=$(find_asset essaim.png icon.png training.png); then
    size=$("$PYTHON" -c 'import sys; print(int.from_bytes(open(sys.argv[1], "rb").read(24)[16:20], "big"))' "$png")
    put_copy 644 "$png" "$ICONS_DIR/${size}x${size}/apps/essaim.png"
  fi
  if [[ -z "$svg$png" ]]; then warn "no essaim icon found: the menu entry gets the default icon"; fi
}

register_autostart() {
  case "$MODE" in
    tray)
      put_file 644 "$AUTOSTART_DIR/essaim.desktop" < <(render_desktop_entry "$(desktop_exec_arg "$VENV/bin/essaim")" 1)
      say "essaim's tray will start at each desktop login"
      ;;
    headless)
      put_file 644 "$UNIT_DIR/$UNIT" < <(render_unit "$VENV/bin/essaim")
      enable_unit "$LAST_WRITE"
      ;;
    none) say "not starting essaim with the session (--no-autostart)" ;;
  esac
}

# enable_unit CHANGED: enables (and starts) the service where systemd's user manager answers.
enable_unit() {
  record unit "$UNIT"
  if ! systemd_user_works; then
    say "systemd's user manager does not answer here: once logged in, run: systemctl --user enable --now $UNIT"
    return 0
  fi
  if [[ ! -d "$UNIT_DIR/default.target.wants" ]]; then record dir "$UNIT_DIR/default.target.wants"; fi
  run systemctl --user daemon-reload
  if [[ $OPT_START == 1 ]]; then
    run systemctl --user enable --now "$UNIT"
    if [[ "$1" == 1 || $ESSAIM_UPDATED == 1 ]]; then run systemctl --user try-restart "$UNIT"; fi
  else
    run systemctl --user enable "$UNIT"
  fi
  say "essaim runs as the systemd user service $UNIT (journalctl --user -u $UNIT shows its log)"
  if command -v loginctl >/dev/null 2>&1 && [[ "$(loginctl show-user "$(id -un)" -p Linger 2>/dev/null || true)" == *=no ]]; then
    say "to keep it running while you are logged out: sudo loginctl enable-linger $(id -un)"
  fi
}

start_tray() {
  if [[ $OPT_START == 0 || "$MODE" != tray ]]; then return 0; fi
  if [[ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]]; then
    say "no display here: the tray starts at your next desktop login"
    return 0
  fi
  if [[ -n "$(essaim_pids "$VENV")" ]]; then
    if [[ $ESSAIM_UPDATED == 1 ]]; then say "essaim is running: quit it from its menu and start it again to use the new version"; fi
    return 0
  fi
  say "starting essaim's tray"
  if [[ $DRY_RUN == 1 ]]; then return 0; fi
  (cd "$HOME" && nohup setsid "$VENV/bin/essaim" >/dev/null 2>&1 </dev/null &)
}

main() {
  parse_args "$@"
  if [[ "$(uname -s)" != Linux ]]; then
    die "this installer is for Linux: on macOS use installers/macos/install.sh, on Windows installers/windows/install.ps1"
  fi
  linux_paths
  trap keep_manifest_on_failure EXIT
  MODE=$OPT_MODE
  if [[ "$MODE" == auto ]]; then
    MODE=headless
    if [[ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]]; then MODE=tray; fi
  fi
  if [[ $DRY_RUN == 1 ]]; then say "dry run: nothing will be changed"; fi
  find_python
  detect_device
  ensure_venv
  install_torch
  install_essaim
  verify_essaim
  put_link "$VENV/bin/essaim" "$BIN_DIR/essaim"
  # the folders the app writes its cache and its log to, made here so that the parents this makes
  # (~/.local/state on a fresh account) are recorded, and removed with essaim when left empty
  ensure_dir "$CACHE_DIR"
  ensure_dir "$STATE_DIR"
  local uninstaller="uninstall.sh from where you got this installer"
  if [[ -n "$SCRIPT_DIR" && -f "$SCRIPT_DIR/uninstall.sh" ]]; then
    put_copy 755 "$SCRIPT_DIR/uninstall.sh" "$DATA_DIR/uninstall.sh"
    uninstaller="bash $DATA_DIR/uninstall.sh"
  fi
  if [[ $OPT_MENU == 1 ]]; then install_menu_entry; fi
  register_autostart
  if [[ -n "$OPT_COORDINATOR" ]]; then set_coordinator "$OPT_COORDINATOR"; fi
  remove_stale
  write_manifest
  start_tray
  case ":$PATH:" in
    *":$BIN_DIR:"*) ;;
    *) say "$BIN_DIR is not on your PATH: add it (e.g. in ~/.profile) to type essaim, or run $VENV/bin/essaim" ;;
  esac
  say "done. Remove essaim with $uninstaller (--keep-data keeps your settings and identity)"
}

if [[ "${ESSAIM_INSTALLER_LIB:-0}" != 1 ]]; then main "$@"; fi
