// Command testapp is the workload of the end-to-end tests: a small HTTP server whose
// behaviour under a kubelet is set by its environment.
//
//	PORT                 port to listen on (default 8080; 0 picks a free one)
//	APP_VERSION          reported by / (default "dev")
//	POD_NAME             reported by / (default: the host name)
//	DRAIN_SECONDS        after SIGTERM, keep serving this long with /readyz at 503, then
//	                     shut the listener down and exit 0 (default 0: exit 0 at once)
//	CRASH_AFTER_SECONDS  exit 1 this long after the start (default: never)
//	ALLOCATE_MIB         allocate and touch this many MiB soon after the start, and keep
//	                     them (default 0)
//	NEVER_READY          1 (or true): /readyz always answers 503
//
// Endpoints: / answers "version=V pod=P", /healthz 200 while the process runs, /readyz 200
// until SIGTERM (503 from then on). POST /unready turns /readyz to 503 for good while / goes
// on answering: a pod that runs and serves but fails its readiness, as the tests inject it. One line per event goes to stdout. A setting that cannot
// be parsed is reported and the process exits 2. It writes no file.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Exit codes.
const (
	exitOK     = 0
	exitCrash  = 1 // CRASH_AFTER_SECONDS elapsed, or the server failed
	exitConfig = 2 // a setting could not be parsed
)

// maxSeconds bounds the durations (a year), far from time.Duration's overflow.
const maxSeconds = 365 * 24 * 3600

// config is what the environment asks for.
type config struct {
	Port        int
	Version     string
	Pod         string
	Drain       time.Duration
	CrashAfter  time.Duration // meaningful only when Crash is set
	Crash       bool
	AllocateMiB int
	NeverReady  bool
}

// loadConfig reads the settings through getenv; hostname names the pod when POD_NAME is
// empty. Every error names the variable, the value and what was expected.
func loadConfig(getenv func(string) string, hostname func() (string, error)) (config, error) {
	cfg := config{Port: 8080, Version: "dev"}
	var errs []error

	if v := getenv("PORT"); v != "" {
		n, err := wholeNumber("PORT", v, "a port number", 65535)
		errs = append(errs, err)
		cfg.Port = n
	}
	if v := getenv("APP_VERSION"); v != "" {
		cfg.Version = v
	}
	cfg.Pod = getenv("POD_NAME")
	if cfg.Pod == "" {
		name, err := hostname()
		if err != nil {
			name = "unknown"
		}
		cfg.Pod = name
	}
	if v := getenv("DRAIN_SECONDS"); v != "" {
		n, err := wholeNumber("DRAIN_SECONDS", v, "a whole number of seconds", maxSeconds)
		errs = append(errs, err)
		cfg.Drain = time.Duration(n) * time.Second
	}
	if v := getenv("CRASH_AFTER_SECONDS"); v != "" {
		n, err := wholeNumber("CRASH_AFTER_SECONDS", v, "a whole number of seconds", maxSeconds)
		errs = append(errs, err)
		cfg.Crash = err == nil
		cfg.CrashAfter = time.Duration(n) * time.Second
	}
	if v := getenv("ALLOCATE_MIB"); v != "" {
		n, err := wholeNumber("ALLOCATE_MIB", v, "a whole number of MiB", 1<<20)
		errs = append(errs, err)
		cfg.AllocateMiB = n
	}
	if v := getenv("NEVER_READY"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("NEVER_READY=%q: want 1 or 0 (true or false)", v))
		}
		cfg.NeverReady = b
	}
	return cfg, errors.Join(errs...)
}

// wholeNumber parses a setting that must be a whole number (of what) from 0 to max.
func wholeNumber(name, value, what string, max int) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(value))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s=%q: want %s, 0 or more", name, value, what)
	}
	if n > max {
		return 0, fmt.Errorf("%s=%q: want %s, at most %d", name, value, what, max)
	}
	return n, nil
}

// logger writes one line per event: a UTC timestamp, then key=value fields.
type logger struct {
	mu  sync.Mutex
	out io.Writer
}

func (l *logger) event(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.out, "%s testapp %s\n", time.Now().UTC().Format(time.RFC3339Nano), fmt.Sprintf(format, args...))
}

// app holds the state the handlers read.
type app struct {
	cfg      config
	draining atomic.Bool
	unready  atomic.Bool
}

func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "version=%s pod=%s\n", a.cfg.Version, a.cfg.Pod)
	})
	mux.HandleFunc("POST /unready", func(w http.ResponseWriter, _ *http.Request) {
		a.unready.Store(true)
		io.WriteString(w, "readyz answers 503 from now on\n")
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case a.cfg.NeverReady:
			http.Error(w, "never ready (NEVER_READY)", http.StatusServiceUnavailable)
		case a.draining.Load():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case a.unready.Load():
			http.Error(w, "unready (POST /unready)", http.StatusServiceUnavailable)
		default:
			io.WriteString(w, "ok\n")
		}
	})
	return mux
}

// ballast keeps the memory ALLOCATE_MIB asked for reachable, so that it is never freed.
var ballast [][]byte

// allocate grows the heap by mib MiB, one MiB at a time, writing to every page of each so
// that the resident set grows with it (untouched pages would cost nothing).
func allocate(mib int, log *logger) {
	log.event("event=allocate-start mib=%d", mib)
	page := os.Getpagesize()
	for i := 0; i < mib; i++ {
		chunk := make([]byte, 1<<20)
		for off := 0; off < len(chunk); off += page {
			chunk[off] = 1
		}
		ballast = append(ballast, chunk)
	}
	log.event("event=allocate-done mib=%d", mib)
}

// signalName is the conventional name of the signals the program handles.
func signalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return sig.String()
}

// serve runs the server on ln until a signal, the crash timer or a server failure, and
// returns the exit code.
func serve(cfg config, ln net.Listener, signals <-chan os.Signal, log *logger) int {
	a := &app{cfg: cfg}
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second}
	failed := make(chan error, 1)
	go func() { failed <- srv.Serve(ln) }()

	log.event("event=start version=%s pod=%s addr=%s drain_seconds=%g never_ready=%t",
		cfg.Version, cfg.Pod, ln.Addr(), cfg.Drain.Seconds(), cfg.NeverReady)

	var crash <-chan time.Time
	if cfg.Crash {
		timer := time.NewTimer(cfg.CrashAfter)
		defer timer.Stop()
		crash = timer.C
	}
	if cfg.AllocateMiB > 0 {
		go allocate(cfg.AllocateMiB, log)
	}

	select {
	case err := <-failed:
		log.event("event=exit code=%d reason=%q", exitCrash, "server failed: "+err.Error())
		return exitCrash
	case <-crash:
		srv.Close()
		log.event("event=exit code=%d reason=crash-after seconds=%g", exitCrash, cfg.CrashAfter.Seconds())
		return exitCrash
	case sig := <-signals:
		a.draining.Store(true)
		if cfg.Drain == 0 {
			log.event("event=signal signal=%s drain_seconds=0", signalName(sig))
			srv.Close()
			log.event("event=exit code=%d reason=signal-without-drain", exitOK)
			return exitOK
		}
		log.event("event=signal signal=%s drain_seconds=%g readyz=503", signalName(sig), cfg.Drain.Seconds())
	}

	drained := time.NewTimer(cfg.Drain)
	defer drained.Stop()
	for waiting := true; waiting; {
		select {
		case <-drained.C:
			waiting = false
		case sig := <-signals:
			log.event("event=signal signal=%s ignored=draining", signalName(sig))
		case <-crash:
			srv.Close()
			log.event("event=exit code=%d reason=crash-after seconds=%g", exitCrash, cfg.CrashAfter.Seconds())
			return exitCrash
		case err := <-failed:
			log.event("event=exit code=%d reason=%q", exitCrash, "server failed: "+err.Error())
			return exitCrash
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		srv.Close()
	}
	log.event("event=exit code=%d reason=drained drain_seconds=%g", exitOK, cfg.Drain.Seconds())
	return exitOK
}

// run is main without the process: the environment, the listener, the signals and the log
// are passed in. It returns the exit code.
func run(getenv func(string) string, hostname func() (string, error),
	listen func(addr string) (net.Listener, error), signals <-chan os.Signal, out io.Writer) int {
	log := &logger{out: out}
	cfg, err := loadConfig(getenv, hostname)
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			log.event("event=config-error error=%q", line)
		}
		log.event("event=exit code=%d reason=config-error", exitConfig)
		return exitConfig
	}
	ln, err := listen(":" + strconv.Itoa(cfg.Port))
	if err != nil {
		log.event("event=exit code=%d reason=%q", exitCrash, "listen: "+err.Error())
		return exitCrash
	}
	return serve(cfg, ln, signals, log)
}

func main() {
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	listen := func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
	os.Exit(run(os.Getenv, os.Hostname, listen, signals, os.Stdout))
}
