#!/bin/sh
set -e
cd "$(dirname "$0")/.."
. lib/text.sh
[ "$(upper kugetsu)" = "KUGETSU" ]
echo "upper ok"
