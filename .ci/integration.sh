#!/usr/bin/env bash
# Integration tests against other MARL libraries, each set in its own virtual environment, so
# their pins (ray[rllib] wants gymnasium==1.2.2, tianshou wants filelock<4) never touch .venv.
#
#   bash .ci/integration.sh            # the default sets: rllib, then marl
#   bash .ci/integration.sh marl       # one set
#   bash .ci/integration.sh benchmarl  # the optional set (not in the default run)
#
# Sets:  rllib     → .venv-rllib     with .[rllib]          (Ray RLlib; also runs the single-agent
#                                                             tests on gymnasium 1.2.2)
#        marl      → .venv-marl      with .[torchrl,supersuit,tianshou]
#                                                            (TorchRL, SuperSuit + SB3, Tianshou)
#        benchmarl → .venv-benchmarl with .[benchmarl]      (BenchMARL 1.5, which needs torchrl<0.12)
# Each venv is built from the project's own files: constraints.txt overlaid with
# requirements/integration-<set>.txt (a pin there wins). An existing venv is reused and brought
# to the pins. Environment: PYTHON (interpreter for new venvs, default python3).
# Exit status: non-zero if any set fails; timings per phase are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ "$#" -gt 0 ]; then sets=("$@"); else sets=(rllib marl); fi

summary=()
status=0
reports="$(mktemp -d)"
for name in "${sets[@]}"; do
    case "$name" in
        rllib)
            extras="rllib"
            require="ray"
            extra_tests=(tests/test_single_agent.py)
            ;;
        marl)
            extras="torchrl,supersuit,tianshou"
            require="torchrl,tensordict,supersuit,tianshou,stable_baselines3"
            extra_tests=()
            ;;
        benchmarl)
            extras="benchmarl"
            require="benchmarl,torchrl"
            extra_tests=()
            ;;
        *)
            echo "integration.sh: unknown set '$name' (valid: rllib, marl, benchmarl)" >&2
            exit 2
            ;;
    esac
    venv=".venv-$name"
    overlay="requirements/integration-$name.txt"
    constraints="$(mktemp)"
    # constraints.txt minus every package that the overlay pins, then the overlay.
    "$PYTHON" - constraints.txt "$overlay" > "$constraints" <<'EOF'
import re
import sys

def name(line):
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ \[;]", line, maxsplit=1)[0]).lower()

def pins(path):
    lines = (line.strip() for line in open(path, encoding="utf-8"))
    return [line for line in lines if line and not line.startswith("#")]

base, overlay = pins(sys.argv[1]), pins(sys.argv[2])
overridden = {name(line) for line in overlay}
print("\n".join([line for line in base if name(line) not in overridden] + overlay))
EOF

    echo "=== integration set '$name': $venv with .[$extras]"
    start=$SECONDS
    if [ ! -x "$venv/bin/python" ]; then
        "$PYTHON" -m venv "$venv"
    fi
    # torch first and alone, so pip takes the CPU build on disk before anything can pull another.
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -c "$constraints" torch==2.13.0
    "$venv/bin/python" -m pip install --quiet -c "$constraints" -e ".[$extras]" pytest
    rm -f "$constraints"
    # A missing extra only warns in pip; fail here, naming the fix, instead of skipping tests later.
    "$venv/bin/python" - "$extras" <<'EOF'
import sys
from importlib.metadata import metadata

provided = set(metadata("peerpreserve").get_all("Provides-Extra") or [])
missing = [extra for extra in sys.argv[1].split(",") if extra not in provided]
if missing:
    sys.exit(f"pyproject.toml lacks the extras {missing}: see examples/README.md")
EOF
    install_s=$((SECONDS - start))

    start=$SECONDS
    set +e
    PEERPRESERVE_INTEGRATION_REQUIRE="$require" "$venv/bin/python" -m pytest -q \
        -m integration tests/integration --junitxml="$reports/$name-integration.xml"
    rc=$?
    if [ "$rc" -eq 0 ] && [ "${#extra_tests[@]}" -gt 0 ]; then
        "$venv/bin/python" -m pytest -q "${extra_tests[@]}" --junitxml="$reports/$name-extra.xml"
        rc=$?
    fi
    set -e
    test_s=$((SECONDS - start))
    summary+=("$name: install ${install_s}s, tests ${test_s}s, exit $rc")
    if [ "$rc" -ne 0 ]; then status=1; fi
done

echo "=== integration summary"
printf '%s\n' "${summary[@]}"
# One closing line over every run, in the form CI's log reader knows.
"$PYTHON" - "$reports" <<'EOF'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

passed = failed = skipped = 0
for report in sorted(Path(sys.argv[1]).glob("*.xml")):
    for suite in ET.parse(report).getroot().iter("testsuite"):
        total, skip = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        passed, failed, skipped = passed + total - skip - bad, failed + bad, skipped + skip
print(f"integration: {passed} passed, {failed} failed, {skipped} skipped")
EOF
rm -rf "$reports"
exit "$status"
