#!/usr/bin/env bash
# Refresh the digests of the pinned base images (make pin-images).
#
# Every image reference written as NAME:TAG@sha256:DIGEST in the files below is looked up in its
# registry by NAME:TAG, and its digest is replaced by the one the tag points at now (the
# multi-platform index digest, so every architecture stays pinned). The tag stays for readers.
#
#   scripts/pin-images.sh           rewrite the files in place
#   scripts/pin-images.sh --check   only report; exit 1 if a pin is out of date
#
# Needs a machine that reaches the registries and one of: docker buildx (imagetools),
# skopeo, crane. Without them it stops with an error and changes nothing.
set -euo pipefail

ROOT=${PIN_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
FILES=(Dockerfile.api Dockerfile.worker docker-compose.yml infra/README.md)
REF_RE='[a-z0-9][a-z0-9./_-]*:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}'

check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# The index digest NAME:TAG points at now, from the first tool that can ask the registry.
resolve() {
  local ref=$1 out
  if docker buildx version >/dev/null 2>&1 &&
    out=$(docker buildx imagetools inspect "$ref" --format '{{json .Manifest}}' 2>/dev/null); then
    sed -n 's/.*"digest": *"\(sha256:[0-9a-f]\{64\}\)".*/\1/p' <<<"$out" | head -n 1
    return
  fi
  if command -v skopeo >/dev/null 2>&1 && out=$(skopeo inspect --raw "docker://$ref" 2>/dev/null); then
    # The digest of the raw manifest (list) is what `@sha256:` pins.
    printf 'sha256:%s\n' "$(printf '%s' "$out" | sha256sum | cut -d' ' -f1)"
    return
  fi
  if command -v crane >/dev/null 2>&1 && out=$(crane digest "$ref" 2>/dev/null); then
    echo "$out"
    return
  fi
  return 1
}

cd "$ROOT"
mapfile -t refs < <(grep -ohE "$REF_RE" "${FILES[@]}" | sort -u)
if [ "${#refs[@]}" -eq 0 ]; then
  echo "pin-images: no NAME:TAG@sha256:DIGEST references in ${FILES[*]}" >&2
  exit 1
fi

stale=0
declare -A new_digest
for ref in "${refs[@]}"; do
  image=${ref%@*}
  [ -n "${new_digest[$image]:-}" ] && continue
  if ! digest=$(resolve "$image") || ! [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]]; then
    echo "pin-images: cannot resolve $image: no registry answered through docker buildx" \
      "imagetools, skopeo or crane (install one, and run where Docker Hub is reachable)." >&2
    echo "pin-images: nothing was changed." >&2
    exit 1
  fi
  new_digest[$image]=$digest
done

for ref in "${refs[@]}"; do
  image=${ref%@*}
  old=${ref#*@}
  new=${new_digest[$image]}
  [ "$old" = "$new" ] && continue
  stale=1
  echo "$image: $old -> $new"
  if ! $check; then
    for f in "${FILES[@]}"; do
      sed -i "s|$image@$old|$image@$new|g" "$f"
    done
  fi
done

if $check && [ "$stale" -eq 1 ]; then
  echo "pin-images: digests are out of date; run scripts/pin-images.sh (make pin-images)" >&2
  exit 1
fi
[ "$stale" -eq 0 ] && echo "pin-images: all ${#refs[@]} pins are current"
exit 0
