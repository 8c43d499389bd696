#!/usr/bin/env bash
# Set up a development environment in .venv and run essaim's demo swarm or its tests.
#
#   ./dev.sh demo [essaim demo options]   set up, then run the local demo swarm
#   ./dev.sh test [pytest options]        set up, then run the test suite (no options: as two sessions
#                                         side by side, the swarms' tests and the rest; see run_suite)
#   ./dev.sh setup                        set up only
#
# Environment:
#   PYTHON              the interpreter to build .venv with (default: python3.11, else python3 >= 3.11)
#   ESSAIM_TORCH_SPEC   the PyTorch requirement installed first (default: torch==2.13.0; pick a
#                       CUDA/ROCm/CPU build with ESSAIM_PIP_ARGS, e.g. "--index-url <pytorch index>")
#   ESSAIM_SYSTEM_DEPS  0 to skip installing the Debian packages the UI tests use (apt-get, as root)
set -euo pipefail

cd "$(dirname "$0")"
VENV=.venv
TORCH_SPEC="${ESSAIM_TORCH_SPEC:-torch==2.13.0}"
read -r -a PIP_ARGS <<<"${ESSAIM_PIP_ARGS:-}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

find_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  echo "essaim needs Python 3.11 or newer: install it (e.g. apt install python3.11 python3.11-venv," \
    "brew install python@3.11, or from python.org) and run this again" >&2
  exit 2
}

setup() {
  local py stamp
  py="$(find_python)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $py"
    "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
  fi
  if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    log "installing $TORCH_SPEC"
    "$VENV/bin/python" -m pip install --quiet "${PIP_ARGS[@]}" "$TORCH_SPEC"
  fi
  stamp="$VENV/.essaim-installed"
  if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" || dev.sh -nt "$stamp" ]]; then
    log "installing essaim and its development tools into $VENV"
    "$VENV/bin/python" -m pip install --quiet "${PIP_ARGS[@]}" -e ".[dev,tray,postgres,gpu]"
    touch "$stamp"
  fi
}

system_deps() {
  # The tray, idle-detection, dashboard and installer tests drive real X servers, a browser and
  # linters, and the NAT tests build home routers from network namespaces (iproute2, iptables;
  # miniupnpd for one that maps ports on request); without these packages they are skipped with
  # the reason.
  [[ "${ESSAIM_SYSTEM_DEPS:-1}" == "0" ]] && return 0
  local wanted=(xvfb xdotool trayer x11-utils imagemagick chromium desktop-file-utils shellcheck iptables iproute2 miniupnpd-iptables)
  local missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    log "not installing ${missing[*]} (needs apt-get as root); the tests that need them will be skipped"
    return 0
  fi
  log "installing Debian packages: ${missing[*]}"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null; then
    log "could not install ${missing[*]}; the tests that need them will be skipped"
  fi
}

# The whole suite as two pytest sessions side by side: the swarms' tests (marked swarm by
# tests/conftest.py: several training processes each) one after another, and all the rest, whose
# report follows the swarms'. Exits non-zero when either session fails.
run_suite() {
  local base; base=$(mktemp -d "${TMPDIR:-/tmp}/essaim-tests.XXXXXX")
  "$VENV/bin/python" -m pytest -m "not swarm" -p no:cacheprovider --basetemp="$base/rest" --durations=10 \
    >"$base/rest.log" 2>&1 &
  local rest=$!
  trap 'kill "$rest" 2>/dev/null' EXIT INT TERM
  local swarm_rc=0 rest_rc=0
  "$VENV/bin/python" -m pytest -m swarm --basetemp="$base/swarm" --durations=30 || swarm_rc=$?
  wait "$rest" || rest_rc=$?
  trap - EXIT INT TERM
  echo
  echo "=== the other tests, run beside the swarms' (log: $base/rest.log) ==="
  cat "$base/rest.log"
  log "swarms' tests: exit $swarm_rc; the other tests: exit $rest_rc (pytest's temporary folders: $base)"
  ((swarm_rc == 0 && rest_rc == 0)) && exit 0
  exit $((swarm_rc != 0 ? swarm_rc : rest_rc))
}

cmd="${1:-demo}"
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$VENV/bin/essaim" demo "$@" ;;
  test)
    setup
    system_deps
    (($# == 0)) && run_suite
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *) echo "usage: ./dev.sh demo|test|setup [options]" >&2; exit 2 ;;
esac
