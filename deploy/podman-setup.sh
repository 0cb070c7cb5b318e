#!/usr/bin/env bash
# One-time host set-up for `surrogate-ops containerize` and deploy/smoke_test.py: podman (with the
# runc runtime), and mmdebstrap, which makes the base image from the Debian archive apt already
# reaches (no container registry is needed). Run as root; safe to run again.
#
#   bash deploy/podman-setup.sh
#
# What it writes, only where the setting is missing: /etc/containers/containers.conf with runc as
# the runtime (crun fails on hosts with hybrid cgroups), no default ulimits and no pids limit
# (a container in an unprivileged build sandbox may not raise them).
set -euo pipefail
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
conf=/etc/containers/containers.conf
mkdir -p /etc/containers
touch "$conf"
if ! grep -q '^\s*runtime\s*=' "$conf"; then
  if grep -q '^\[engine\]' "$conf"; then
    sed -i '/^\[engine\]/a runtime = "runc"' "$conf"
  else
    printf '\n[engine]\nruntime = "runc"\n' >> "$conf"
  fi
fi
for setting in 'default_ulimits = []' 'pids_limit = 0'; do
  key=${setting%% =*}
  if ! grep -q "^\s*$key\s*=" "$conf"; then
    if grep -q '^\[containers\]' "$conf"; then
      sed -i "/^\[containers\]/a $setting" "$conf"
    else
      printf '\n[containers]\n%s\n' "$setting" >> "$conf"
    fi
  fi
done
podman --version
