#!/usr/bin/env bash
# The test command of the README and of CI: installs what the tests need, runs every test project, and ends
# with one line "N passed, N failed, N skipped" summed over all projects.
set -uo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh || exit 1

log=$(mktemp)
aot=$(mktemp -d)
ceph=$(mktemp -d /tmp/platter-test-ceph.XXXXXX)
trap 'scripts/ceph-cluster.sh stop "$ceph" >/dev/null 2>&1; rm -rf "$log" "$aot" "$ceph"' EXIT

# One Ceph cluster for the whole run, started while the AOT publish below runs: the RBD tests of every project
# (Rbd, Contract, Guest) attach to it through PLATTER_TEST_CEPH_DIR, each fixture in a pool of its own, instead of
# each project starting a cluster of its own (seconds each, and idle daemons that take CPU from the tests). Only
# the tests that kill OSDs still start their own. If it fails to start, the tests start their own as when run alone.
scripts/ceph-cluster.sh start "$ceph" >"$ceph.out" 2>&1 &
ceph_pid=$!

# The binary the .deb ships, published once with Native AOT (its own artifacts path, so it never touches the bin/obj
# the tests build into). DebPackageTests and DebUpgradeTests package this one, the guest restart test
# (Platter.Guest.Tests, restarts under a running guest) runs it instead of the JIT build, and the tests of what AOT
# could break (the OpenAPI description, the dashboard, /metrics) run a second time against it below.
aot_status=0
if scripts/build-deb.sh --publish-only "$aot" >/dev/null; then
  export PLATTER_DEB_BINARY="$aot/platter"
else
  aot_status=1
  echo "tests: the Native AOT publish (scripts/build-deb.sh --publish-only) failed"
fi

if wait "$ceph_pid"; then
  export PLATTER_TEST_CEPH_DIR="$ceph"
else
  echo "tests: the shared Ceph cluster did not start (each RBD test project starts its own): $(tail -3 "$ceph.out")"
fi
rm -f "$ceph.out"

# --blame-hang cuts a test that hangs (and dumps where it hung) instead of letting the whole run stall.
timeout 80m dotnet test Platter.slnx -c Release \
  --blame-hang --blame-hang-timeout 10m \
  2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# The same tests with every server and CLI call run by the AOT binary instead of platter.dll (PLATTER_TEST_BINARY).
if [[ $aot_status -eq 0 ]]; then
  echo "tests: the OpenAPI, dashboard and metrics tests against the Native AOT binary"
  PLATTER_TEST_BINARY="$aot/platter" timeout 20m dotnet test tests/Platter.Interop.Tests -c Release --no-build \
    --filter "FullyQualifiedName~Platter.Interop.Tests.OpenApiTests|FullyQualifiedName~Platter.Interop.Tests.MetricsTests|FullyQualifiedName~Platter.Interop.Tests.DashboardTests" \
    2>&1 | tee -a "$log"
  aot_tests=${PIPESTATUS[0]}
  [[ $status -eq 0 ]] && status=$aot_tests
else
  [[ $status -eq 0 ]] && status=$aot_status
fi

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
