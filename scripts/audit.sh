#!/usr/bin/env bash
# Known-vulnerability audit of a hash-locked requirements file with pip-audit (`make audit`).
#
#   scripts/audit.sh [LOCKFILE]          default requirements/dev.lock
#
# JOBQ_AUDIT=required (default)  every failure fails, including "vulnerability service unreachable"
# JOBQ_AUDIT=auto (CI)           if the service cannot be reached, print "AUDIT NOT RUN: ..." and
#                                exit 0; vulnerabilities found still fail
# JOBQ_AUDIT_SERVICE=pypi|osv    pip-audit's -s (default pypi); JOBQ_AUDIT_OSV_URL overrides OSV's URL
# JOBQ_TOOLS                     the venv holding pip-audit (default .venv-tools)
#
# Why a probe first: pip-audit's PyPI service reads https://pypi.org/pypi/NAME/VERSION/json and
# treats a 404 there as "package not on PyPI": the package is skipped and, without --strict, the
# run ends "No known vulnerabilities found" having audited nothing. So the probe asks that exact
# endpoint about the lock's first pin, and --strict makes any skip fatal.
set -euo pipefail

lock=${1:-requirements/dev.lock}
tools=${JOBQ_TOOLS:-.venv-tools}
mode=${JOBQ_AUDIT:-required}
service=${JOBQ_AUDIT_SERVICE:-pypi}
osv_url=${JOBQ_AUDIT_OSV_URL:-https://api.osv.dev/v1/query}

case $mode in
  required | auto) ;;
  *) echo "audit: JOBQ_AUDIT must be 'required' or 'auto', not '$mode'" >&2; exit 2 ;;
esac
case $service in
  pypi | osv) ;;
  *) echo "audit: JOBQ_AUDIT_SERVICE must be 'pypi' or 'osv', not '$service'" >&2; exit 2 ;;
esac
[ -f "$lock" ] || { echo "audit: no lock file $lock (make lock)" >&2; exit 2; }
[ -x "$tools/bin/pip-audit" ] || { echo "audit: no $tools/bin/pip-audit (make tools)" >&2; exit 2; }

not_run() {  # $1: why
  if [ "$mode" = auto ]; then
    echo "AUDIT NOT RUN: vulnerability service unreachable ($service: $1) - JOBQ_AUDIT=auto, not failing"
    exit 0
  fi
  echo "AUDIT NOT RUN: vulnerability service unreachable ($service: $1); failing (JOBQ_AUDIT=$mode)" >&2
  exit 1
}

# The probe: one request with a short timeout, about a package the lock pins.
if ! why=$("$tools/bin/python" - "$lock" "$service" "$osv_url" 2>&1 <<'EOF'
import json, re, sys, urllib.error, urllib.request

lock, service, osv_url = sys.argv[1:4]
with open(lock) as f:
    m = re.search(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", f.read(), re.M)
if not m:
    sys.exit(f"no name==version pin in {lock}")
name, version = m.group(1).lower(), m.group(2)
if service == "pypi":
    req = urllib.request.Request(f"https://pypi.org/pypi/{name}/{version}/json")
else:
    body = {"package": {"name": name, "ecosystem": "PyPI"}, "version": version}
    req = urllib.request.Request(
        osv_url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
try:
    with urllib.request.urlopen(req, timeout=10) as resp:
        doc = json.load(resp)
except urllib.error.HTTPError as e:
    sys.exit(f"HTTP {e.code} for {name} {version}")
except Exception as e:  # DNS, connect, TLS, timeout, not JSON
    sys.exit(f"{type(e).__name__}: {e}")
if not isinstance(doc, dict) or (service == "pypi" and "info" not in doc):
    sys.exit(f"unexpected answer for {name} {version}")
EOF
); then
  not_run "$(echo "$why" | tail -n 1)"
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
args=(--require-hashes --disable-pip --strict --progress-spinner off -s "$service" -r "$lock")
[ "$service" = osv ] && args+=(--osv-url "$osv_url")
echo "pip-audit ${args[*]}"
set +e
"$tools/bin/pip-audit" "${args[@]}" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e

[ "$rc" -eq 0 ] && exit 0
# Vulnerabilities found: always a failure.
grep -Eq '^Found [0-9]+ known vulnerabilit' "$out" && exit "$rc"
# The service went away after the probe (or skipped packages): same as unreachable.
if grep -Eq 'could not be audited|network may be blocking|ConnectionError|ConnectTimeout|ReadTimeout|Max retries exceeded|ServiceError' "$out"; then
  not_run "pip-audit: $(grep -E 'could not be audited|network may be blocking|Error|Timeout' "$out" | tail -n 1 | cut -c1-160)"
fi
exit "$rc"
