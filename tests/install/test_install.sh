#!/usr/bin/env bash
# Installs Snakepit into a scratch prefix and builds and runs the C++
# example against the installed headers and library only, through
# pkg-config: what a user's own project does. Usage: BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
source=$2
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT

cmake --install "$build" --prefix "$prefix" >/dev/null
pc_dir=$(dirname "$(find "$prefix" -name snakepit.pc | head -n 1)")
flags=$(PKG_CONFIG_PATH=$pc_dir pkg-config --cflags --libs snakepit)
# shellcheck disable=SC2086  # the flags are words
c++ -o "$prefix/example" "$source/examples/cpp_example.cc" $flags
# The installed runtime, not the source tree's.
cd "$prefix"
SNAKEPIT_PYTHON=/usr/bin/python3 "$prefix/example" \
  "$source/examples/lab.py" >"$prefix/out.txt"
grep -q . "$prefix/out.txt"
# The runtime's C half, when the build made it, is installed beside the
# package, where workers of the installed runtime import it.
if compgen -G "$build/python/_snakepit_native*.so" >/dev/null; then
  PYTHONPATH="$prefix/share/snakepit/python" /usr/bin/python3 -c \
    "import snakepit._accel as a; assert a.native is not None, 'no C half'"
fi
echo "install: built and ran the example against $prefix"
