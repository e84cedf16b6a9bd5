//go:build tools

// Package tools pins crane, which assembles and saves the images the real nodes run.
package tools

import _ "github.com/google/go-containerregistry/cmd/crane"
