#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter, or explains what to install.
# megatron-core 0.19 needs Python >= 3.12; many machines default to 3.11, and
# pyenv shims refuse to run a version that is not selected, so we look at the
# interpreters themselves. 3.12 is preferred: it is the version we test on.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
for cand in python3.12 python3.13 python3; do
  path=$(command -v "$cand" 2>/dev/null) || continue
  if ok "$path"; then echo "$path"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for path in $(ls -d "$root"/versions/3.1[2-9]*/bin/python 2>/dev/null | sort -V); do
    if ok "$path"; then echo "$path"; exit 0; fi
  done
fi
cat >&2 <<'MSG'
error: no Python >= 3.12 found (megatron-core 0.19 requires it).
Install one, e.g. `pyenv install 3.12` or your distribution's python3.12
package, or point the Makefile at it: make setup PYTHON=/path/to/python3.12
MSG
exit 1
