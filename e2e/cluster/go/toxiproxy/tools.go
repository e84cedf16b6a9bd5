//go:build tools

// Package tools pins toxiproxy, the fault proxy the tests put between the operator and the
// API server: latency, bandwidth limits, resets and blackholes for the operator alone.
package tools

import (
	_ "github.com/Shopify/toxiproxy/v2/cmd/cli"
	_ "github.com/Shopify/toxiproxy/v2/cmd/server"
)
