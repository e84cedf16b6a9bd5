package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain lets a test run this binary as the program itself (TESTAPP_AS_MAIN=1), so that
// real signals and real exit codes can be checked.
func TestMain(m *testing.M) {
	if os.Getenv("TESTAPP_AS_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func host(name string) func() (string, error) {
	return func() (string, error) { return name, nil }
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

func TestRootAnswersVersionAndPodName(t *testing.T) {
	a := &app{cfg: config{Version: "v2", Pod: "web-0-abc"}}
	code, body := get(t, a.handler(), "/")
	if code != http.StatusOK || body != "version=v2 pod=web-0-abc\n" {
		t.Fatalf("GET / = %d %q, want 200 %q", code, body, "version=v2 pod=web-0-abc\n")
	}
	if code, _ := get(t, a.handler(), "/nothing-here"); code != http.StatusNotFound {
		t.Fatalf("GET /nothing-here = %d, want 404", code)
	}
}

func TestHealthzAndReadyzAnswer200UntilDrainThenReadyz503(t *testing.T) {
	a := &app{cfg: config{Version: "dev", Pod: "p"}}
	h := a.handler()
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := get(t, h, path); code != http.StatusOK {
			t.Fatalf("GET %s before drain = %d, want 200", path, code)
		}
	}
	a.draining.Store(true)
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Fatalf("GET /readyz while draining = %d %q, want 503 draining", code, body)
	}
	for _, path := range []string{"/healthz", "/"} {
		if code, _ := get(t, h, path); code != http.StatusOK {
			t.Fatalf("GET %s while draining = %d, want 200 (it keeps serving)", path, code)
		}
	}
}

func TestNeverReadyAnswers503FromTheStart(t *testing.T) {
	a := &app{cfg: config{NeverReady: true}}
	if code, _ := get(t, a.handler(), "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("GET /readyz with NEVER_READY = %d, want 503", code)
	}
	if code, _ := get(t, a.handler(), "/healthz"); code != http.StatusOK {
		t.Fatalf("GET /healthz with NEVER_READY = %d, want 200", code)
	}
}

func TestPostUnreadyTurnsReadyzTo503ForGoodWhileRootStillAnswers(t *testing.T) {
	a := &app{cfg: config{Version: "v1", Pod: "p"}}
	if code, _ := get(t, a.handler(), "/readyz"); code != http.StatusOK {
		t.Fatalf("GET /readyz before = %d, want 200", code)
	}
	rec := httptest.NewRecorder()
	a.handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/unready", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("POST /unready = %d, want 200", rec.Code)
	}
	if code, _ := get(t, a.handler(), "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("GET /readyz after POST /unready = %d, want 503", code)
	}
	if code, body := get(t, a.handler(), "/"); code != http.StatusOK || body != "version=v1 pod=p\n" {
		t.Fatalf("GET / after POST /unready = %d %q, want 200", code, body)
	}
}

func TestConfigDefaultsAndHostnameFallback(t *testing.T) {
	cfg, err := loadConfig(env(nil), host("node-host"))
	if err != nil {
		t.Fatal(err)
	}
	want := config{Port: 8080, Version: "dev", Pod: "node-host"}
	if cfg != want {
		t.Fatalf("defaults = %+v, want %+v", cfg, want)
	}
	cfg, err = loadConfig(env(map[string]string{
		"PORT": "9090", "APP_VERSION": "v3", "POD_NAME": "web-1", "DRAIN_SECONDS": "7",
		"CRASH_AFTER_SECONDS": "0", "ALLOCATE_MIB": "256", "NEVER_READY": "1",
	}), host("ignored"))
	if err != nil {
		t.Fatal(err)
	}
	want = config{Port: 9090, Version: "v3", Pod: "web-1", Drain: 7 * time.Second,
		Crash: true, CrashAfter: 0, AllocateMiB: 256, NeverReady: true}
	if cfg != want {
		t.Fatalf("config = %+v, want %+v", cfg, want)
	}
	if cfg, _ := loadConfig(env(nil), func() (string, error) { return "", errors.New("no") }); cfg.Pod != "unknown" {
		t.Fatalf("pod without POD_NAME nor host name = %q, want unknown", cfg.Pod)
	}
}

func TestConfigErrorsNameTheVariableTheValueAndWhatIsExpected(t *testing.T) {
	for _, c := range []struct{ name, value, want string }{
		{"PORT", "http", `PORT="http": want a port number, 0 or more`},
		{"PORT", "70000", `PORT="70000": want a port number, at most 65535`},
		{"DRAIN_SECONDS", "-1", `DRAIN_SECONDS="-1": want a whole number of seconds, 0 or more`},
		{"DRAIN_SECONDS", "1.5", `DRAIN_SECONDS="1.5": want a whole number of seconds`},
		{"CRASH_AFTER_SECONDS", "soon", `CRASH_AFTER_SECONDS="soon": want a whole number of seconds`},
		{"CRASH_AFTER_SECONDS", "99999999999", `CRASH_AFTER_SECONDS="99999999999": want a whole number of seconds, at most 31536000`},
		{"ALLOCATE_MIB", "1G", `ALLOCATE_MIB="1G": want a whole number of MiB`},
		{"NEVER_READY", "maybe", `NEVER_READY="maybe": want 1 or 0`},
	} {
		_, err := loadConfig(env(map[string]string{c.name: c.value}), host("h"))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s=%q: error %v, want one containing %q", c.name, c.value, err, c.want)
		}
	}
	_, err := loadConfig(env(map[string]string{"PORT": "x", "ALLOCATE_MIB": "y"}), host("h"))
	if err == nil || !strings.Contains(err.Error(), "PORT") || !strings.Contains(err.Error(), "ALLOCATE_MIB") {
		t.Fatalf("two bad settings: error %v, want both named", err)
	}
}

func TestBadNumberExitsTwoWithoutListening(t *testing.T) {
	var out bytes.Buffer
	listen := func(string) (net.Listener, error) {
		t.Fatal("listened despite a bad setting")
		return nil, nil
	}
	code := run(env(map[string]string{"DRAIN_SECONDS": "ten"}), host("h"), listen, nil, &out)
	if code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	if !strings.Contains(out.String(), `DRAIN_SECONDS=\"ten\": want a whole number of seconds, 0 or more`) ||
		!strings.Contains(out.String(), "event=exit code=2 reason=config-error") {
		t.Fatalf("log does not say what is wrong:\n%s", out.String())
	}
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines and the test's.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startServe runs serve on a loopback listener; the exit code arrives on the channel.
func startServe(t *testing.T, cfg config) (base string, signals chan os.Signal, done chan int, log *syncBuffer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	signals = make(chan os.Signal, 2)
	done = make(chan int, 1)
	log = &syncBuffer{}
	go func() { done <- serve(cfg, ln, signals, &logger{out: log}) }()
	return "http://" + ln.Addr().String(), signals, done, log
}

func status(t *testing.T, url string) int {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func exitCode(t *testing.T, done <-chan int, within time.Duration) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(within):
		t.Fatalf("did not exit within %s", within)
		return -1
	}
}

func TestSigtermDrainsWithReadyz503ThenShutsTheListenerDownAndExitsZero(t *testing.T) {
	cfg := config{Version: "v1", Pod: "p", Drain: 600 * time.Millisecond}
	base, signals, done, log := startServe(t, cfg)
	if code := status(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz before SIGTERM = %d", code)
	}
	sent := time.Now()
	signals <- syscall.SIGTERM
	deadline := time.Now().Add(500 * time.Millisecond)
	for status(t, base+"/readyz") != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("/readyz still 200 after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code := status(t, base+"/"); code != http.StatusOK {
		t.Fatalf("/ while draining = %d, want 200", code)
	}
	if code := exitCode(t, done, 5*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0\n%s", code, log)
	}
	if took := time.Since(sent); took < cfg.Drain {
		t.Fatalf("exited %s after SIGTERM, before the %s drain", took, cfg.Drain)
	}
	if _, err := http.Get(base + "/"); err == nil {
		t.Fatal("the listener still accepts after the drain")
	}
	for _, want := range []string{"event=start", "event=signal signal=SIGTERM", "event=exit code=0 reason=drained"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

func TestSigtermWithoutDrainExitsZeroAtOnce(t *testing.T) {
	_, signals, done, log := startServe(t, config{Pod: "p"})
	signals <- syscall.SIGTERM
	if code := exitCode(t, done, 500*time.Millisecond); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if !strings.Contains(log.String(), "reason=signal-without-drain") {
		t.Fatalf("log lacks the exit reason:\n%s", log)
	}
}

func TestCrashAfterExitsOne(t *testing.T) {
	start := time.Now()
	_, _, done, log := startServe(t, config{Pod: "p", Crash: true, CrashAfter: 200 * time.Millisecond})
	if code := exitCode(t, done, 5*time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Fatalf("crashed after %s, before 200ms", took)
	}
	if !strings.Contains(log.String(), "event=exit code=1 reason=crash-after") {
		t.Fatalf("log lacks the exit reason:\n%s", log)
	}
}

// asMain starts this test binary as the program, with the given settings.
func asMain(t *testing.T, vars ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{"TESTAPP_AS_MAIN=1"}, vars...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, bufio.NewScanner(stdout)
}

func TestTheProcessDrainsOnARealSigtermAndExitsZero(t *testing.T) {
	cmd, lines := asMain(t, "PORT=0", "DRAIN_SECONDS=1", "POD_NAME=web-0")
	if !lines.Scan() {
		t.Fatal("no start line")
	}
	start := lines.Text()
	i := strings.Index(start, "addr=")
	if i < 0 {
		t.Fatalf("start line without addr: %q", start)
	}
	addr := strings.Fields(start[i+len("addr="):])[0]
	port := addr[strings.LastIndex(addr, ":")+1:]
	base := "http://127.0.0.1:" + port
	if code := status(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d before SIGTERM", code)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(800 * time.Millisecond)
	for status(t, base+"/readyz") != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("/readyz still 200 after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var rest []string
	for lines.Scan() {
		rest = append(rest, lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, strings.Join(rest, "\n"))
	}
	if len(rest) == 0 || !strings.Contains(rest[len(rest)-1], "event=exit code=0 reason=drained") {
		t.Fatalf("last line is not the drained exit:\n%s", strings.Join(rest, "\n"))
	}
}

func TestTheProcessExitsTwoOnABadNumber(t *testing.T) {
	cmd, lines := asMain(t, "ALLOCATE_MIB=many")
	var out []string
	for lines.Scan() {
		out = append(out, lines.Text())
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("exit %v, want code 2\n%s", err, strings.Join(out, "\n"))
	}
	if joined := strings.Join(out, "\n"); !strings.Contains(joined, `ALLOCATE_MIB=\"many\"`) {
		t.Fatalf("output does not name the bad setting:\n%s", joined)
	}
}

// vmRSS is the resident set of process pid in bytes (Linux).
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skip("no /proc:", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS line %q: %v", line, err)
			}
			return kib << 10
		}
	}
	t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

func TestAllocateMiBGrowsTheResidentSetAndKeepsIt(t *testing.T) {
	cmd, lines := asMain(t, "PORT=0", "ALLOCATE_MIB=64")
	for lines.Scan() {
		if strings.Contains(lines.Text(), "event=allocate-done mib=64") {
			break
		}
	}
	time.Sleep(200 * time.Millisecond) // a GC cycle, had the memory been let go
	if rss := vmRSS(t, cmd.Process.Pid); rss < 64<<20 {
		t.Fatalf("resident set %d MiB after allocating 64 MiB", rss>>20)
	}
}
