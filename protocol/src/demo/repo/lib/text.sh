# Text helpers for the scripts; load them with `. lib/text.sh`.

# upper TEXT: prints TEXT in capitals.
upper() {
  printf '%s\n' "$1" | tr '[:lower:]' '[:upper:]'
}

# repeat N TEXT: prints TEXT N times on one line, separated by spaces.
repeat() {
  n=$1
  out=""
  while [ "$n" -gt 0 ]; do
    out="${out:+$out }$2"
    n=$((n - 1))
  done
  printf '%s\n' "$out"
}
