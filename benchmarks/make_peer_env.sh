#!/usr/bin/env bash
# Create benchmarks/.envs/scvi: a separate environment with scvi-tools 1.4.2 (the peer),
# never a dependency of scprob.  Usage: bash benchmarks/make_peer_env.sh
set -euo pipefail
cd "$(dirname "$0")"
ENV=.envs/scvi
if [ ! -x "$ENV/bin/python" ]; then
  python -m venv "$ENV"
fi
"$ENV/bin/pip" install -q torch==2.13.0 "scvi-tools==1.4.2" psutil
"$ENV/bin/python" -c "import scvi; print('scvi-tools', scvi.__version__)"
