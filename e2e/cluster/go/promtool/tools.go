//go:build tools

// Package tools pins promtool, which checks the chart's alerting rules, runs their unit
// tests and lints the operator's /metrics output.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
