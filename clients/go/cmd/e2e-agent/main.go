// Command e2e-agent drives the Go SDK for the cross-language end-to-end suite.
//
//	e2e-agent send    -target HOST:PORT -path P (-json JSON | -hex HEX) [-header K=V]...
//	e2e-agent consume -target HOST:PORT -path P [-group G] -count N
//	                  [-mode ok|fail|deadletter|sleep:SECONDS] [-ack-deadline SECONDS]
//	                  [-concurrency N] [-timeout SECONDS]
//
// Both take -token TOKEN (sent as "authorization: Bearer TOKEN") and
// -tls-ca FILE (connect over TLS, trusting the PEM certificates in FILE).
//
// send prints the message id. consume runs the SDK's Run with one handler
// that prints one JSON line per delivery to stdout
// ({"message_id","path","content_type","payload_hex","attempt","headers"})
// and then: ok → returns nil (ack), fail → a plain error (nack),
// deadletter → DeadLetter("e2e dead letter"), sleep:S → sleeps S seconds and
// returns nil. It prints READY on stderr once the stream is open, and exits 0
// after N deliveries were handled and settled (1 on a timeout or error).
package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	leanmq "github.com/leanmq/leanmq-grpc/clients/go"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage:
  e2e-agent send    -target HOST:PORT -path P (-json JSON | -hex HEX) [-header K=V]...
  e2e-agent consume -target HOST:PORT -path P [-group G] -count N [-mode ok|fail|deadletter|sleep:SECONDS]
                    [-ack-deadline SECONDS] [-concurrency N] [-timeout SECONDS]
  both:             [-token TOKEN] [-tls-ca FILE]
`

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "send":
		err = send(ctx, args[1:], stdout, stderr)
	case "consume":
		err = consume(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "unknown subcommand %q\n%s", args[0], usage)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "e2e-agent: %v\n%s", err, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "e2e-agent: %v\n", err)
		return 1
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

type headerFlags map[string]string

func (h headerFlags) String() string { return fmt.Sprint(map[string]string(h)) }
func (h headerFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("header %q: want KEY=VALUE", v)
	}
	h[k] = val
	return nil
}

// connFlags are the flags that say how to reach leanmqd.
type connFlags struct {
	target *string
	token  *string
	tlsCA  *string
}

func addConnFlags(fs *flag.FlagSet) connFlags {
	return connFlags{
		target: fs.String("target", "127.0.0.1:50051", "leanmqd address"),
		token:  fs.String("token", "", "bearer token (leanmqd --auth-tokens)"),
		tlsCA:  fs.String("tls-ca", "", "connect over TLS, trusting the PEM certificates in this file"),
	}
}

// options turns the connection flags into client options.
func (f connFlags) options() ([]leanmq.Option, error) {
	var opts []leanmq.Option
	if *f.token != "" {
		opts = append(opts, leanmq.WithToken(*f.token))
	}
	if *f.tlsCA != "" {
		pem, err := os.ReadFile(*f.tlsCA)
		if err != nil {
			return nil, usageError{fmt.Sprintf("-tls-ca: %v", err)}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usageError{fmt.Sprintf("-tls-ca %s: no PEM certificate in it", *f.tlsCA)}
		}
		opts = append(opts, leanmq.WithDialOptions(grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(pool, ""))))
	}
	return opts, nil
}

func send(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	conn := addConnFlags(fs)
	path := fs.String("path", "", "webhook path")
	jsonArg := fs.String("json", "", "JSON payload (sent as application/json)")
	hexArg := fs.String("hex", "", "hex payload (sent as application/octet-stream)")
	contentType := fs.String("content-type", "", "override the content type")
	headers := headerFlags{}
	fs.Var(headers, "header", "application header KEY=VALUE (repeatable)")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *path == "" {
		return usageError{"send: -path is required"}
	}
	setJSON, setHex := false, false
	fs.Visit(func(f *flag.Flag) {
		setJSON = setJSON || f.Name == "json"
		setHex = setHex || f.Name == "hex"
	})
	if setJSON == setHex {
		return usageError{"send: give exactly one of -json and -hex"}
	}
	var payload any
	if setJSON {
		if !json.Valid([]byte(*jsonArg)) {
			return usageError{"send: -json is not valid JSON"}
		}
		payload = json.RawMessage(*jsonArg)
	} else {
		b, err := hex.DecodeString(*hexArg)
		if err != nil {
			return usageError{fmt.Sprintf("send: -hex: %v", err)}
		}
		payload = b
	}
	connOpts, err := conn.options()
	if err != nil {
		return err
	}
	client, err := leanmq.Dial(*conn.target, append(connOpts, leanmq.WithLogger(stderrLogger(stderr)))...)
	if err != nil {
		return err
	}
	defer client.Close()
	var opts []leanmq.SendOption
	if len(headers) > 0 {
		opts = append(opts, leanmq.WithHeaders(headers))
	}
	if *contentType != "" {
		opts = append(opts, leanmq.WithContentType(*contentType))
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	id, err := client.Send(sctx, *path, payload, opts...)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, id)
	return err
}

// deliveryLine is the JSON line printed per delivery.
type deliveryLine struct {
	MessageID   string            `json:"message_id"`
	Path        string            `json:"path"`
	ContentType string            `json:"content_type"`
	PayloadHex  string            `json:"payload_hex"`
	Attempt     int               `json:"attempt"`
	Headers     map[string]string `json:"headers"`
}

func parseMode(mode string) (leanmq.HandlerFunc, error) {
	switch {
	case mode == "ok":
		return func(context.Context, *leanmq.Delivery) error { return nil }, nil
	case mode == "fail":
		return func(context.Context, *leanmq.Delivery) error { return errors.New("e2e failure") }, nil
	case mode == "deadletter":
		return func(context.Context, *leanmq.Delivery) error { return leanmq.DeadLetter("e2e dead letter") }, nil
	case strings.HasPrefix(mode, "sleep:"):
		secs, err := strconv.ParseFloat(strings.TrimPrefix(mode, "sleep:"), 64)
		if err != nil || secs < 0 {
			return nil, fmt.Errorf("mode %q: want sleep:SECONDS", mode)
		}
		d := time.Duration(secs * float64(time.Second))
		return func(ctx context.Context, _ *leanmq.Delivery) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}, nil
	}
	return nil, fmt.Errorf("unknown mode %q", mode)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func consume(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("consume", flag.ContinueOnError)
	fs.SetOutput(stderr)
	conn := addConnFlags(fs)
	path := fs.String("path", "", "webhook path")
	group := fs.String("group", "", "consumer group (default: LeanMQ's group for the path)")
	count := fs.Int("count", 0, "exit after this many deliveries")
	mode := fs.String("mode", "ok", "ok | fail | deadletter | sleep:SECONDS")
	ackDeadline := fs.Float64("ack-deadline", 0, "lease length in seconds (default: the broker's 30 s)")
	concurrency := fs.Int("concurrency", 1, "handlers run at once")
	timeout := fs.Float64("timeout", 0, "give up (exit 1) after this many seconds; 0: never")
	consumer := fs.String("consumer", "", "consumer name")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *path == "" || *count <= 0 {
		return usageError{"consume: -path and a positive -count are required"}
	}
	act, err := parseMode(*mode)
	if err != nil {
		return usageError{"consume: " + err.Error()}
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if *timeout > 0 {
		var cancelT context.CancelFunc
		runCtx, cancelT = context.WithTimeout(runCtx, seconds(*timeout))
		defer cancelT()
	}

	var readyOnce sync.Once
	opts := []leanmq.Option{
		leanmq.WithLogger(stderrLogger(stderr)),
		leanmq.WithConcurrency(*concurrency),
		leanmq.WithGroup(*group),
		leanmq.WithOnSubscribed(func(string) {
			readyOnce.Do(func() { fmt.Fprintln(stderr, "READY") })
		}),
	}
	if *ackDeadline > 0 {
		opts = append(opts, leanmq.WithAckDeadline(seconds(*ackDeadline)))
	}
	if *consumer != "" {
		opts = append(opts, leanmq.WithConsumer(*consumer))
	}
	connOpts, err := conn.options()
	if err != nil {
		return err
	}
	client, err := leanmq.Dial(*conn.target, append(opts, connOpts...)...)
	if err != nil {
		return err
	}
	defer client.Close()

	var (
		claimed atomic.Int64 // deliveries taken by the handler
		handled atomic.Int64 // handlers that returned
		outMu   sync.Mutex
	)
	client.Handle(*path, func(hctx context.Context, d *leanmq.Delivery) error {
		if claimed.Add(1) > int64(*count) {
			// Beyond -count (possible with -concurrency > 1): hand it back
			// quickly, unprinted, for another consumer.
			return leanmq.RetryAfter(time.Millisecond)
		}
		line, err := json.Marshal(deliveryLine{
			MessageID: d.MessageID, Path: d.Path, ContentType: d.ContentType,
			PayloadHex: hex.EncodeToString(d.Payload), Attempt: d.Attempt, Headers: d.Headers,
		})
		if err != nil {
			return err
		}
		outMu.Lock()
		// os.Stdout is unbuffered: each line goes out in one write, at once.
		_, werr := stdout.Write(append(line, '\n'))
		outMu.Unlock()
		if werr != nil {
			return werr
		}
		herr := act(hctx, d)
		if handled.Add(1) == int64(*count) {
			cancel() // graceful stop: Run settles this delivery before returning
		}
		return herr
	})

	if err := client.Run(runCtx); err != nil {
		return err
	}
	if n := handled.Load(); n < int64(*count) {
		return fmt.Errorf("stopped after %d of %d deliveries: %v", n, *count, context.Cause(runCtx))
	}
	return nil
}

func stderrLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
