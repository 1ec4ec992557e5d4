#!/bin/sh
# Runs every tests/test_*.sh and says how many passed.
cd "$(dirname "$0")/.."
passed=0
failed=0
for test in tests/test_*.sh; do
  [ -e "$test" ] || continue
  if sh "$test" >/dev/null 2>&1; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL $test"
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
