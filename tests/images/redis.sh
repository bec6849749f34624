#!/usr/bin/env bash
# Builds a Redis image locally, FROM scratch, out of this machine's redis-server and the
# libraries it links (no registry is needed). Does nothing when the image exists.
# Usage: bash tests/images/redis.sh [IMAGE]   (default stagegate-test/redis:local)
set -euo pipefail
image=${1:-stagegate-test/redis:local}
# Tests run in parallel processes: one builds, the others wait for it.
exec 9>"${TMPDIR:-/tmp}/stagegate-image-build.lock"
flock 9
if docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
server=$(command -v redis-server) || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/root/usr/bin" "$context/root/tmp" "$context/root/data"
# Debian's redis-server is a link to redis-check-rdb, which picks its role by its name.
cp -L "$server" "$context/root/usr/bin/redis-server"
for lib in $(ldd "$server" | grep -o '/[^ ]*'); do
  mkdir -p "$context/root$(dirname "$lib")"
  cp -L "$lib" "$context/root$lib"
done
cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/bin/redis-server"]
CMD ["--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
DOCKERFILE
docker build -q -t "$image" "$context" >/dev/null
echo "built $image"
