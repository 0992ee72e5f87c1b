#!/usr/bin/env bash
# The test command of the README and of CI: installs what the tests need, runs every test project, and ends
# with one line "N passed, N failed, N skipped" summed over all projects.
set -uo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh || exit 1

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# --blame-hang cuts a test that hangs (and dumps where it hung) instead of letting the whole run stall.
timeout 80m dotnet test Platter.slnx -c Release \
  --blame-hang --blame-hang-timeout 10m \
  2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# dotnet test prints one summary per test project ("Passed!  - Failed: 0, Passed: 92, Skipped: 0, Total: 92, ...").
awk '
  /(Passed|Failed)! +- +Failed: +[0-9]+, +Passed: +[0-9]+, +Skipped: +[0-9]+/ {
    line = $0
    gsub(/,/, "", line)
    n = split(line, word, / +/)
    for (i = 1; i < n; i++) {
      if (word[i] == "Failed:") failed += word[i + 1]
      if (word[i] == "Passed:") passed += word[i + 1]
      if (word[i] == "Skipped:") skipped += word[i + 1]
    }
    projects++
  }
  END { printf "%d passed, %d failed, %d skipped\n", passed, failed, skipped }
' "$log"

if [[ $status -eq 124 ]]; then echo "tests: timed out after 80 minutes"; fi
exit "$status"
