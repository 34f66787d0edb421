# Debian packages the project runs on, checked (and installed when missing) by both
# `./run` (demo, test) and `.ci/run`, so a newcomer's two commands work on a fresh machine.
# Sourced, not executed. Defines system_packages_missing and ensure_system_packages.

# What runs the product: PostgreSQL's server binaries, Java and Maven for Kafka, venv;
# statement documents: WeasyPrint loads Pango and HarfBuzz's subsetter and needs a font.
# What the tests also use: pdftotext reads PDFs, headless Chromium screenshots the HTML.
system_packages_missing() {
  local for_tests="${1:-}" missing=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
    || { command -v initdb >/dev/null && command -v pg_ctl >/dev/null; } \
    || missing+=(postgresql)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  # (grep without -q: an early exit would fail ldconfig's write under pipefail.)
  ldconfig -p | grep libpangoft2-1.0 >/dev/null || missing+=(libpango-1.0-0 libpangoft2-1.0-0)
  ldconfig -p | grep libharfbuzz-subset >/dev/null || missing+=(libharfbuzz-subset0)
  [[ -d /usr/share/fonts/truetype/dejavu ]] || missing+=(fonts-dejavu-core)
  if [[ -n "$for_tests" ]]; then
    command -v pdftotext >/dev/null || missing+=(poppler-utils)
    command -v chromium >/dev/null || missing+=(chromium)
  fi
  echo "${missing[*]}"
}

# ensure_system_packages [tests]: install what is missing (as root, with apt), or say how.
ensure_system_packages() {
  local missing
  missing="$(system_packages_missing "${1:-}")"
  [[ -n "$missing" ]] || return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing system packages: $missing" >&2
    apt-get update -qq
    # shellcheck disable=SC2086 # a list of package names
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
  else
    echo "missing system packages: $missing" >&2
    echo "install them with: sudo apt-get install -y $missing" >&2
    return 1
  fi
}
