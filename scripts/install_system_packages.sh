#!/usr/bin/env bash
# Optional system packages the test suite checks (README, "What gets installed"): WordNet 3.0 for NLTK's METEOR
# (`wordnet-base`, read by sparseoccvla_core/wordnet.py) and a Java runtime for pycocoevalcap's METEOR 1.5
# (`default-jre-headless`, only where no `java` is on PATH). Installed only where apt-get and root are available
# (CI machines, .ci/run); anywhere else the script says what it leaves out and exits 0: scripts/install.sh needs no
# root, and the tests that need these packages then skip with the reason (pytest -rs lists them).
set -uo pipefail

need=()
[ -f /usr/share/wordnet/data.noun ] || need+=(wordnet-base)
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
if [ ${#need[@]} -eq 0 ]; then
    echo "[system] wordnet-base and java are present"
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[system] not root or no apt-get: ${need[*]} not installed (the METEOR tests that need them will skip)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "[system] apt-get install ${need[*]}"
if ! apt-get install -y --no-install-recommends "${need[@]}" >/tmp/sparseoccvla-apt.log 2>&1; then
    # a fresh container has no package lists yet
    if ! { apt-get update && apt-get install -y --no-install-recommends "${need[@]}"; } >>/tmp/sparseoccvla-apt.log 2>&1; then
        echo "[system] could not install ${need[*]} (log: /tmp/sparseoccvla-apt.log); the tests that need them will skip"
        exit 0
    fi
fi
echo "[system] installed ${need[*]}"
