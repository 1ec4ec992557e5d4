#!/bin/sh
# Says goodbye.
# TODO: take the name as the first argument, as greet.sh does.
echo "goodbye, world"
