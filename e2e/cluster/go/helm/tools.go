//go:build tools

// Package tools pins the Helm version used to install and lint the chart.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
