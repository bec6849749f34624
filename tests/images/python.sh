#!/usr/bin/env bash
# Builds a Python image locally, FROM scratch, out of Debian's python3 (/usr/bin), its
# standard library and the libraries both link (no registry is needed): enough to run
# the tests' order services (standard library only) as containers.
# Usage: bash tests/images/python.sh [IMAGE]   (default stagegate-test/python:local)
set -euo pipefail
image=${1:-stagegate-test/python:local}
exec 9>"${TMPDIR:-/tmp}/stagegate-image-build.lock"
flock 9
if docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
[ -x /usr/bin/python3 ] || { echo "Debian's python3 is not installed (apt-get install python3)" >&2; exit 1; }
python=$(readlink -f /usr/bin/python3)
stdlib=$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
dynload=$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["platstdlib"])')/lib-dynload
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/root/usr/bin" "$context/root/tmp" "$context/root$stdlib"
cp -L "$python" "$context/root/usr/bin/python3"
# The standard library without its own tests.
tar -C "$stdlib" --exclude=./test --exclude=./idlelib --exclude=./tkinter --exclude=./site-packages \
  --exclude=./dist-packages --exclude='./config-*' --exclude='__pycache__' -cf - . \
  | tar -C "$context/root$stdlib" -xf -
for object in "$python" "$dynload"/*.so; do
  for lib in $(ldd "$object" 2>/dev/null | grep -o '/[^ ]*'); do
    if [ ! -e "$context/root$lib" ]; then
      mkdir -p "$context/root$(dirname "$lib")"
      cp -L "$lib" "$context/root$lib"
    fi
  done
done
cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["/usr/bin/python3"]
DOCKERFILE
docker build -q -t "$image" "$context" >/dev/null
echo "built $image"
