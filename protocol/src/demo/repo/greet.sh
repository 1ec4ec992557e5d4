#!/bin/sh
# Prints a greeting.
name="${1:-world}"
echo "hello, $name"
