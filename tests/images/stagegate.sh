#!/usr/bin/env bash
# Builds a stagegate image locally, FROM scratch, out of a stagegate binary (its debug
# symbols stripped) and the libraries it links: no registry is needed. The tag is the
# binary's hash, so a rebuilt binary gets a new image; older ones of this name go.
# Usage: bash tests/images/stagegate.sh BINARY [REPO]   (default stagegate-test/stagegate)
# Prints the image's name.
set -euo pipefail
binary=$1
repo=${2:-stagegate-test/stagegate}
exec 9>"${TMPDIR:-/tmp}/stagegate-image-build.lock"
flock 9
tag=$(sha256sum "$binary" | cut -c1-16)
image="$repo:$tag"
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/root/usr/local/bin" "$context/root/tmp" "$context/root/reports"
objcopy --strip-debug "$binary" "$context/root/usr/local/bin/stagegate"
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  mkdir -p "$context/root$(dirname "$lib")"
  cp -L "$lib" "$context/root$lib"
done
cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
ENV PATH=/usr/local/bin
WORKDIR /reports
ENTRYPOINT ["/usr/local/bin/stagegate"]
DOCKERFILE
docker build -q -t "$image" "$context" >/dev/null
# Older builds of this image go: only the newest is kept.
docker image ls "$repo" --format '{{.Repository}}:{{.Tag}}' | grep -vx "$image" | xargs -r docker rmi -f >/dev/null 2>&1 || true
echo "$image"
