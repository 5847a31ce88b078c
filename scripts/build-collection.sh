#!/usr/bin/env bash
# Builds the Ansible collection gpu_proc_collector.gpu_proc_collector: the role plus the collector's own wheel,
# so that `ansible-galaxy collection install` of the tarball is all a controller needs (docs/operations.md, "As an
# Ansible collection"). Assembles build/collection/ from collection/ (galaxy.yml.in with the version of
# collector/__init__.py, meta/runtime.yml, README.md) and roles/, builds the wheel into the role's files/wheels/
# (the role's install.yml installs a wheel found there), then `ansible-galaxy collection build` into dist/
# (or the directory given as $1). Prints the tarball's path.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:-$REPO/dist}" && cd "${1:-$REPO/dist}" && pwd)"
PYTHON="${PYTHON:-python3}"
STAGE="$REPO/build/collection"
ROLE="$STAGE/roles/gpu_proc_collector"

VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/collector/__init__.py")"
[ -n "$VERSION" ] || { echo "build-collection.sh: no __version__ in collector/__init__.py" >&2; exit 1; }

rm -rf "$STAGE"
mkdir -p "$STAGE/meta" "$ROLE/files/wheels"
sed "s/@VERSION@/$VERSION/" "$REPO/collection/galaxy.yml.in" >"$STAGE/galaxy.yml"
cp "$REPO/collection/README.md" "$STAGE/README.md"
cp "$REPO/LICENSE" "$STAGE/LICENSE"
cp "$REPO/collection/meta/runtime.yml" "$STAGE/meta/runtime.yml"
# The role as it is in the repository, without caches.
(cd "$REPO/roles" && tar --exclude=__pycache__ --exclude='*.pyc' --exclude=wheels -cf - gpu_proc_collector) \
    | (cd "$STAGE/roles" && tar -xf -)

# A role's own filter_plugins/ load only for roles outside collections (ansible-core's playbook/role/__init__.py,
# Role._load_role_data: add_all_plugin_dirs only when the role has no collection), and a collection's role does
# not find the collection's filters by their short names (tests/test_collection.py fails so). So the filters move
# to the collection's plugins/filter/ and the role's vars and templates call them by their fully qualified names.
# The names come from the plugin's own FilterModule.filters().
mkdir -p "$STAGE/plugins/filter"
mv "$ROLE/filter_plugins/gpu_proc_collector.py" "$STAGE/plugins/filter/gpu_proc_collector.py"
rmdir "$ROLE/filter_plugins"
FILTERS="$("$PYTHON" - "$STAGE/plugins/filter/gpu_proc_collector.py" <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("gpc_filters", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print("|".join(sorted(module.FilterModule().filters())))
PY
)"
[ -n "$FILTERS" ] || { echo "build-collection.sh: the filter plugin defines no filters" >&2; exit 1; }
find "$ROLE" -type f \( -name '*.yml' -o -name '*.j2' \) -exec \
    sed -E -i "s/\\|[[:space:]]*($FILTERS)\\b/| gpu_proc_collector.gpu_proc_collector.\\1/g" {} +
if grep -rnE "\\|[[:space:]]*($FILTERS)\\b" "$ROLE"; then
    echo "build-collection.sh: unqualified filter calls left in the role" >&2; exit 1
fi

# The wheel, built from a copy of just what it is made of (pyproject.toml reads README.md; setuptools packages
# collector/ only and puts LICENSE into the metadata, as it does building from the repository), so nothing stale
# in the repository's build/ gets in. SOURCE_DATE_EPOCH gives reproducible zip timestamps, as the role's own
# build does (tasks/install.yml).
SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
cp "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/LICENSE" "$SRC/"
(cd "$REPO" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - collector) | (cd "$SRC" && tar -xf -)
SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel --no-deps --quiet --disable-pip-version-check \
    --wheel-dir "$ROLE/files/wheels" "$SRC"
WHEEL="$ROLE/files/wheels/gpu_proc_collector-$VERSION-py3-none-any.whl"
[ -f "$WHEEL" ] || { echo "build-collection.sh: pip built no $(basename "$WHEEL")" >&2; exit 1; }

ansible-galaxy collection build --force --output-path "$OUT" "$STAGE" >&2
echo "$OUT/gpu_proc_collector-gpu_proc_collector-$VERSION.tar.gz"
