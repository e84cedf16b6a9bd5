module perennial.dev/testapp

go 1.26.0
