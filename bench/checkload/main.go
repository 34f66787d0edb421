// Command checkload is an open-loop gRPC load generator for CheckUse (bench/checkuse.py).
//
// It sends pre-serialised CheckUseRequest messages at a fixed rate: request i is due at
// start + i/rate and is sent at that time whether or not earlier requests were answered,
// each on its own goroutine. Latency is measured from the request's due time, not from
// when it was actually sent, so a client that falls behind (descheduled on a busy machine)
// adds its lag to the figures instead of hiding it. Each answer's verdict (field 1 of
// CheckUseResponse) is compared with the one the request must get.
//
// The messages travel as bytes (a pass-through codec): no reflection or JSON per call,
// which is what makes this client cheaper than ghz (~100 against ~400 µs of CPU a call).
//
// Input: a file of records, each a 4-byte big-endian length, one byte of expected verdict
// (0 = do not check) and the serialised request. Output: JSON on stdout.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const method = "/residuals.v1.ApprovalService/CheckUse"

// raw passes serialised messages through unchanged.
type raw struct{}

func (raw) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (raw) Name() string { return "proto" }

type request struct {
	expect  byte
	message []byte
}

type result struct {
	latency time.Duration
	lag     time.Duration
	err     string
	verdict int
}

func readRequests(path string) ([]request, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []request
	for len(data) > 0 {
		if len(data) < 5 {
			return nil, errors.New("truncated record header")
		}
		n := int(binary.BigEndian.Uint32(data))
		if len(data) < 5+n {
			return nil, io.ErrUnexpectedEOF
		}
		out = append(out, request{expect: data[4], message: data[5 : 5+n]})
		data = data[5+n:]
	}
	return out, nil
}

// verdict reads field 1 (varint) of a CheckUseResponse; 0 when absent.
func verdict(message []byte) int {
	for i := 0; i < len(message); {
		key, n := binary.Uvarint(message[i:])
		if n <= 0 {
			return -1
		}
		i += n
		field, wire := key>>3, key&7
		switch wire {
		case 0:
			value, m := binary.Uvarint(message[i:])
			if m <= 0 {
				return -1
			}
			if field == 1 {
				return int(value)
			}
			i += m
		case 1:
			i += 8
		case 2:
			length, m := binary.Uvarint(message[i:])
			if m <= 0 {
				return -1
			}
			i += m + int(length)
		case 5:
			i += 4
		default:
			return -1
		}
	}
	return 0
}

func main() {
	targets := flag.String("targets", "", "comma-separated host:port list (connections spread over them)")
	rate := flag.Float64("rate", 1000, "requests per second")
	input := flag.String("requests", "", "request file")
	authorization := flag.String("authorization", "", "value of the authorization metadata")
	connections := flag.Int("connections", 4, "connections per target")
	timeout := flag.Duration("timeout", 10*time.Second, "per-request deadline")
	flag.Parse()

	requests, err := readRequests(*input)
	if err != nil {
		fmt.Fprintln(os.Stderr, "checkload:", err)
		os.Exit(2)
	}
	var conns []*grpc.ClientConn
	for _, target := range strings.Split(*targets, ",") {
		for c := 0; c < *connections; c++ {
			conn, err := grpc.NewClient(target,
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultCallOptions(grpc.ForceCodec(raw{})))
			if err != nil {
				fmt.Fprintln(os.Stderr, "checkload:", err)
				os.Exit(2)
			}
			conns = append(conns, conn)
		}
	}
	base := metadata.NewOutgoingContext(context.Background(),
		metadata.Pairs("authorization", *authorization))
	// One call per connection before the clock starts: connection set-up is not measured.
	for _, conn := range conns {
		var reply []byte
		message := requests[0].message
		ctx, cancel := context.WithTimeout(base, *timeout)
		err := conn.Invoke(ctx, method, &message, &reply)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "checkload: warm-up call failed:", err)
			os.Exit(2)
		}
	}

	results := make([]result, len(requests))
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / *rate)
	start := time.Now().Add(10 * time.Millisecond)
	for i := range requests {
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		wg.Add(1)
		go func(i int, due time.Time) {
			defer wg.Done()
			sent := time.Now()
			message := requests[i].message
			var reply []byte
			ctx, cancel := context.WithTimeout(base, *timeout)
			err := conns[i%len(conns)].Invoke(ctx, method, &message, &reply)
			cancel()
			r := &results[i]
			r.latency = time.Since(due)
			r.lag = sent.Sub(due)
			if err != nil {
				r.err = status.Code(err).String() + ": " + status.Convert(err).Message()
				return
			}
			r.verdict = verdict(reply)
		}(i, due)
	}
	wg.Wait()
	elapsed := time.Since(start)

	errorsByText := map[string]int{}
	latencies := make([]int64, 0, len(results))
	wrong := 0
	var maxLag time.Duration
	for i, r := range results {
		if r.lag > maxLag {
			maxLag = r.lag
		}
		if r.err != "" {
			errorsByText[r.err]++
			continue
		}
		latencies = append(latencies, r.latency.Microseconds())
		if expect := requests[i].expect; expect != 0 && r.verdict != int(expect) {
			wrong++
		}
	}
	out := map[string]any{
		"requests":        len(requests),
		"elapsed_s":       elapsed.Seconds(),
		"errors":          errorsByText,
		"wrong_verdicts":  wrong,
		"max_send_lag_us": maxLag.Microseconds(),
		"latencies_us":    latencies,
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "checkload:", err)
		os.Exit(2)
	}
}
