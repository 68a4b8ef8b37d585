#!/bin/sh
# A `command` function that fails: reads its input, complains, exits 3.
cat >/dev/null
echo "something went wrong: bad input" >&2
exit 3
