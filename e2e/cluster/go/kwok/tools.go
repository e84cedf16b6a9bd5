//go:build tools

// Package tools pins the KWOK version that stands in for kubelets.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
