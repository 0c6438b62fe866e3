#!/usr/bin/env bash
# Offline checks of the deployment files (no container engine, cluster or Slurm needed; run by
# cluster/test.sh, about 5 s once the validators are installed):
#   docker/docker-compose.yml   against the Compose specification's schema (check-jsonschema)
#   cluster/k8s/**/*.yaml       against Kubernetes' OpenAPI schemas, strict (kubernetes-validate)
#   cluster/slurm/*.sbatch      bash syntax, and every #SBATCH line before the first command
#                               (sbatch ignores the ones after it)
# Installs the two validators from PyPI for the python3 on PATH when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '==> %s\n' "$*"; }

need=()
command -v check-jsonschema >/dev/null || need+=(check-jsonschema)
command -v kubernetes-validate >/dev/null || need+=(kubernetes-validate)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (pip)"
  python3 -m pip install --quiet --disable-pip-version-check "${need[@]}"
  hash -r
fi

check-jsonschema --builtin-schema vendor.compose-spec docker/docker-compose.yml
say "docker/docker-compose.yml: valid against the Compose specification"

mapfile -t K8S < <(find cluster/k8s -name '*.yaml' | sort)
kubernetes-validate --strict --quiet "${K8S[@]}"
say "${#K8S[@]} Kubernetes manifests valid (strict, Kubernetes $(kubernetes-validate --version | tail -n 1)" \
    "schemas): ${K8S[*]}"

for f in cluster/slurm/*.sbatch; do
  bash -n "$f"
  # the #SBATCH directives sbatch reads: those before the first line that is not blank or a comment
  awk -v f="$f" '
    /^#SBATCH/ { if (body) { printf "%s:%d: #SBATCH after the first command (sbatch ignores it)\n", f, NR; bad = 1 }
                 else n++ }
    !/^[[:space:]]*(#|$)/ { body = 1 }
    END { if (!n) { printf "%s: no #SBATCH lines\n", f; bad = 1 }; exit bad }' "$f"
done
say "$(ls cluster/slurm/*.sbatch | wc -l) Slurm batch scripts: syntax and #SBATCH placement ok"
