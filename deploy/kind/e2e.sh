#!/usr/bin/env bash
# End-to-end check of the Helm chart on a kind cluster: create the cluster, build and load the
# image, install KubeRay and the chart with `helm install --wait`, run `helm test`, submit a
# TrainingJob and wait for it to succeed. Needs docker, kind, kubectl and helm (v3.14+ or v4);
# CI runs it (.github/workflows/kind.yml). It cannot run on a machine without Docker.
#
#   deploy/kind/e2e.sh            # create, install, test (keeps the cluster)
#   KEEP_CLUSTER=0 deploy/kind/e2e.sh   # delete the cluster at the end
set -euo pipefail

CLUSTER=${CLUSTER:-pylon}
NAMESPACE=${NAMESPACE:-pylon}
KUBERAY_VERSION=${KUBERAY_VERSION:-1.7.0}
TIMEOUT=${TIMEOUT:-15m}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CHART="$ROOT/deploy/helm/pylon"

diagnose() {
  echo "---- diagnostics" >&2
  kubectl -n "$NAMESPACE" get all,raycluster,trainingjobs,pvc,networkpolicy -o wide >&2 || true
  kubectl -n "$NAMESPACE" describe pods >&2 || true
  for pod in $(kubectl -n "$NAMESPACE" get pods -o name); do
    echo "---- logs of $pod" >&2
    kubectl -n "$NAMESPACE" logs "$pod" --all-containers --tail=200 >&2 || true
  done
  kubectl -n "$NAMESPACE" get trainingjob kind-smoke -o yaml >&2 || true
}
trap 'diagnose' ERR
if [ "${KEEP_CLUSTER:-1}" = "0" ]; then trap 'kind delete cluster --name "$CLUSTER"' EXIT; fi

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml" --wait 120s

docker build -t pylon:kind "$ROOT"
kind load docker-image pylon:kind --name "$CLUSTER"

# KubeRay once per cluster (the chart's kuberay subchart stays off).
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --namespace kuberay-system --create-namespace --wait --timeout "$TIMEOUT"

# The chart declares KubeRay as an optional dependency: `helm install` wants it in charts/.
helm dependency build "$CHART"
helm lint "$CHART" --strict -f "$HERE/values-kind.yaml"
helm upgrade --install pylon "$CHART" --namespace "$NAMESPACE" --create-namespace \
  -f "$HERE/values-kind.yaml" --wait --timeout "$TIMEOUT"
kubectl -n "$NAMESPACE" wait raycluster/pylon-ray --for=jsonpath='{.status.state}'=ready --timeout=10m

helm test pylon --namespace "$NAMESPACE" --logs --timeout 5m

kubectl -n "$NAMESPACE" delete trainingjob kind-smoke --ignore-not-found --wait
kubectl -n "$NAMESPACE" apply -f "$HERE/trainingjob.yaml"
kubectl -n "$NAMESPACE" wait trainingjob/kind-smoke --for=jsonpath='{.status.phase}'=Succeeded --timeout="$TIMEOUT"
kubectl -n "$NAMESPACE" wait trainingjob/kind-smoke --for=condition=Ready --timeout=1m
kubectl -n "$NAMESPACE" get trainingjob kind-smoke
echo "kind e2e: the chart installed, helm test passed and the TrainingJob succeeded"
