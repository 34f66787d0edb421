/* checkload: an open-loop gRPC load generator for CheckUse (bench/checkuse.py).

   Request i is due at start + i/rate and is sent at that time whether or not earlier
   requests were answered. Latency is measured from the request's due time, not from when
   it was actually sent, so a client that falls behind (descheduled on a busy machine)
   adds its lag to the figures instead of hiding it. Each answer's verdict (field 1 of
   CheckUseResponse) is compared with the one the request must get; an answer whose
   grpc-status is not 0 is an error.

   It speaks gRPC's HTTP/2 mapping itself over plain TCP (h2c): one thread, one epoll loop,
   a timerfd for the schedule, each request's HEADERS and DATA frames in one write, the
   answers' header blocks decoded with HPACK (RFC 7541). On this 2-core virtual machine a
   thread's sleep and wake-up costs more CPU than a whole call here, and the load
   generator shares the cores with the service it measures: a gRPC library client (ghz,
   grpc-go) hands each call between goroutines and threads and cost 300-550 us of CPU a
   call, this one a fraction of that. Requests go round-robin over the connections, which
   are spread over the targets (gRPC's client-side round_robin).

   Input: a file of records, each a 4-byte big-endian length, one byte of expected verdict
   (0 = do not check) and the serialised request. Output: JSON on stdout, as
   {"requests", "elapsed_s", "errors": {text: count}, "wrong_verdicts",
    "max_send_lag_us", "latencies_us": [...]} (latencies of the answered requests).

   cc -O2 -o checkload checkload.c
   checkload -targets 127.0.0.1:50051[,...] -rate 1000 -requests FILE
             -authorization "Bearer rsd_..." [-connections 2] [-timeout 10] */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* RFC 7541 Appendix B (Huffman code) and Appendix A (static table), generated from
   golang.org/x/net/http2/hpack's tables. */
static const uint32_t huffman_codes[256] = {
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
    0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
    0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
    0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
    0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa,
    0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
    0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
    0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62,
    0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
    0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72,
    0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
    0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
    0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
    0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
    0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
    0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9,
    0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
    0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
    0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde,
    0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
    0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef,
    0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
    0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
    0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
    0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2,
    0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
    0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
    0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
    0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
};
static const uint8_t huffman_lengths[256] = {
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
};
static const char *const static_table[61][2] = {
    {":authority", ""},
    {":method", "GET"},
    {":method", "POST"},
    {":path", "/"},
    {":path", "/index.html"},
    {":scheme", "http"},
    {":scheme", "https"},
    {":status", "200"},
    {":status", "204"},
    {":status", "206"},
    {":status", "304"},
    {":status", "400"},
    {":status", "404"},
    {":status", "500"},
    {"accept-charset", ""},
    {"accept-encoding", "gzip, deflate"},
    {"accept-language", ""},
    {"accept-ranges", ""},
    {"accept", ""},
    {"access-control-allow-origin", ""},
    {"age", ""},
    {"allow", ""},
    {"authorization", ""},
    {"cache-control", ""},
    {"content-disposition", ""},
    {"content-encoding", ""},
    {"content-language", ""},
    {"content-length", ""},
    {"content-location", ""},
    {"content-range", ""},
    {"content-type", ""},
    {"cookie", ""},
    {"date", ""},
    {"etag", ""},
    {"expect", ""},
    {"expires", ""},
    {"from", ""},
    {"host", ""},
    {"if-match", ""},
    {"if-modified-since", ""},
    {"if-none-match", ""},
    {"if-range", ""},
    {"if-unmodified-since", ""},
    {"last-modified", ""},
    {"link", ""},
    {"location", ""},
    {"max-forwards", ""},
    {"proxy-authenticate", ""},
    {"proxy-authorization", ""},
    {"range", ""},
    {"referer", ""},
    {"refresh", ""},
    {"retry-after", ""},
    {"server", ""},
    {"set-cookie", ""},
    {"strict-transport-security", ""},
    {"transfer-encoding", ""},
    {"user-agent", ""},
    {"vary", ""},
    {"via", ""},
    {"www-authenticate", ""},
};

#define METHOD "/residuals.v1.ApprovalService/CheckUse"
#define RECEIVE_WINDOW (1u << 30) /* ours: answers never wait for a WINDOW_UPDATE */
#define MAX_TABLE 4096             /* HPACK dynamic table (SETTINGS_HEADER_TABLE_SIZE) */

static void die(const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("checkload: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    exit(2);
}

static void *must(void *p) {
    if (!p) die("out of memory");
    return p;
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* --- growable byte buffer ------------------------------------------------------------ */

typedef struct {
    uint8_t *data;
    size_t len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t more) {
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    b->data = must(realloc(b->data, cap));
    b->cap = cap;
}

static void buf_add(buf_t *b, const void *data, size_t n) {
    buf_reserve(b, n);
    memcpy(b->data + b->len, data, n);
    b->len += n;
}

static void buf_consume(buf_t *b, size_t n) {
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

/* --- HPACK (RFC 7541) ------------------------------------------------------------------- */

/* Huffman decoding tree: node 0 is the root; child[bit] > 0 is a node, < 0 is -(symbol+1). */
static int32_t huffman_tree[2 * 512][2];
static int huffman_nodes = 1;

static void huffman_init(void) {
    for (int symbol = 0; symbol < 256; symbol++) {
        uint32_t code = huffman_codes[symbol];
        int length = huffman_lengths[symbol], node = 0;
        for (int bit = length - 1; bit >= 0; bit--) {
            int b = (code >> bit) & 1;
            if (bit == 0) {
                huffman_tree[node][b] = -(symbol + 1);
            } else {
                if (huffman_tree[node][b] <= 0) huffman_tree[node][b] = huffman_nodes++;
                node = huffman_tree[node][b];
            }
        }
    }
}

/* Decodes a Huffman string into out (returns its length, -1 if malformed). */
static int huffman_decode(const uint8_t *in, size_t n, char *out, size_t cap) {
    int node = 0;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        for (int bit = 7; bit >= 0; bit--) {
            int32_t next = huffman_tree[node][(in[i] >> bit) & 1];
            if (next < 0) {
                if (len >= cap) return -1;
                out[len++] = (char)(-next - 1);
                node = 0;
            } else if (next == 0) {
                return -1;
            } else {
                node = next;
            }
        }
    }
    return (int)len; /* a partial code at the end is the EOS padding */
}

typedef struct {
    char *name, *value;
    size_t size; /* 32 + name + value octets */
} entry_t;

typedef struct {
    entry_t *entries; /* newest first */
    int count, cap;
    size_t size, max;
} table_t;

static void table_evict(table_t *t) {
    while (t->count && t->size > t->max) {
        entry_t *old = &t->entries[--t->count];
        t->size -= old->size;
        free(old->name);
        free(old->value);
    }
}

/* Adds an entry (newest first), evicting the oldest to make room; one larger than the
   table empties it and is not added (RFC 7541, 4.4). */
static void table_add(table_t *t, const char *name, size_t nlen, const char *value, size_t vlen) {
    size_t size = 32 + nlen + vlen;
    while (t->count && t->size + size > t->max) {
        entry_t *old = &t->entries[--t->count];
        t->size -= old->size;
        free(old->name);
        free(old->value);
    }
    if (size > t->max) return;
    if (t->count == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->entries = must(realloc(t->entries, (size_t)t->cap * sizeof(entry_t)));
    }
    memmove(t->entries + 1, t->entries, (size_t)t->count * sizeof(entry_t));
    t->entries[0] = (entry_t){must(strndup(name, nlen)), must(strndup(value, vlen)), size};
    t->count++;
    t->size += size;
}

/* Reads an integer with an N-bit prefix; -1 when truncated or too large. */
static int64_t hpack_int(const uint8_t **p, const uint8_t *end, int prefix) {
    if (*p >= end) return -1;
    int64_t mask = (1 << prefix) - 1, value = **p & mask;
    (*p)++;
    if (value < mask) return value;
    for (int shift = 0; shift <= 28; shift += 7) {
        if (*p >= end) return -1;
        uint8_t byte = *(*p)++;
        value += (int64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) return value;
    }
    return -1;
}

/* Reads a string literal into out (NUL-terminated); its length, or -1. */
static int hpack_string(const uint8_t **p, const uint8_t *end, char *out, size_t cap) {
    if (*p >= end) return -1;
    int huffman = **p & 0x80;
    int64_t n = hpack_int(p, end, 7);
    if (n < 0 || n > end - *p) return -1;
    int len;
    if (huffman) {
        len = huffman_decode(*p, (size_t)n, out, cap - 1);
    } else {
        if ((size_t)n >= cap) return -1;
        memcpy(out, *p, (size_t)n);
        len = (int)n;
    }
    *p += n;
    if (len >= 0) out[len] = 0;
    return len;
}

/* The name and value of table index i (1-based: static, then dynamic); 0 when unknown. */
static int hpack_lookup(table_t *t, int64_t i, const char **name, const char **value) {
    if (i >= 1 && i <= 61) {
        *name = static_table[i - 1][0];
        *value = static_table[i - 1][1];
        return 1;
    }
    if (i > 61 && i - 62 < t->count) {
        *name = t->entries[i - 62].name;
        *value = t->entries[i - 62].value;
        return 1;
    }
    return 0;
}

/* Calls field(name, value, arg) for each header of a block; 0 when the block is malformed. */
static int hpack_decode(table_t *t, const uint8_t *p, size_t n,
                        void (*field)(const char *, const char *, void *), void *arg) {
    static char name[8192], value[8192];
    const uint8_t *end = p + n;
    while (p < end) {
        uint8_t first = *p;
        const char *fname, *fvalue;
        if (first & 0x80) { /* indexed field */
            int64_t i = hpack_int(&p, end, 7);
            if (i <= 0 || !hpack_lookup(t, i, &fname, &fvalue)) return 0;
            field(fname, fvalue, arg);
            continue;
        }
        if ((first & 0xe0) == 0x20) { /* dynamic table size update */
            int64_t size = hpack_int(&p, end, 5);
            if (size < 0 || size > MAX_TABLE) return 0;
            t->max = (size_t)size;
            table_evict(t);
            continue;
        }
        int indexing = (first & 0xc0) == 0x40;
        int64_t i = hpack_int(&p, end, indexing ? 6 : 4);
        if (i < 0) return 0;
        int nlen;
        if (i == 0) {
            nlen = hpack_string(&p, end, name, sizeof name);
            if (nlen < 0) return 0;
        } else {
            const char *known, *unused;
            if (!hpack_lookup(t, i, &known, &unused)) return 0;
            nlen = (int)strlen(known);
            if ((size_t)nlen >= sizeof name) return 0;
            memcpy(name, known, (size_t)nlen + 1);
        }
        int vlen = hpack_string(&p, end, value, sizeof value);
        if (vlen < 0) return 0;
        field(name, value, arg);
        if (indexing) table_add(t, name, (size_t)nlen, value, (size_t)vlen);
    }
    return 1;
}

static void hpack_put_int(buf_t *b, uint8_t flags, int prefix, uint64_t value) {
    uint64_t mask = (1u << prefix) - 1;
    uint8_t byte;
    if (value < mask) {
        byte = flags | (uint8_t)value;
        buf_add(b, &byte, 1);
        return;
    }
    byte = flags | (uint8_t)mask;
    buf_add(b, &byte, 1);
    for (value -= mask; value >= 128; value >>= 7) {
        byte = (uint8_t)(value & 0x7f) | 0x80;
        buf_add(b, &byte, 1);
    }
    byte = (uint8_t)value;
    buf_add(b, &byte, 1);
}

/* A literal header field without indexing, new name, no Huffman: stateless. */
static void hpack_put_literal(buf_t *b, const char *name, const char *value) {
    hpack_put_int(b, 0x00, 4, 0);
    hpack_put_int(b, 0x00, 7, strlen(name));
    buf_add(b, name, strlen(name));
    hpack_put_int(b, 0x00, 7, strlen(value));
    buf_add(b, value, strlen(value));
}

/* --- HTTP/2 framing --------------------------------------------------------------------- */

enum { DATA = 0, HEADERS = 1, RST_STREAM = 3, SETTINGS = 4, PING = 6, GOAWAY = 7,
       WINDOW_UPDATE = 8, CONTINUATION = 9 };
enum { END_STREAM = 0x1, ACK = 0x1, END_HEADERS = 0x4, PADDED = 0x8, PRIORITY = 0x20 };

static void frame_header(buf_t *b, uint32_t length, uint8_t type, uint8_t flags, uint32_t stream) {
    uint8_t h[9] = {(uint8_t)(length >> 16), (uint8_t)(length >> 8), (uint8_t)length, type, flags,
                    (uint8_t)(stream >> 24), (uint8_t)(stream >> 16), (uint8_t)(stream >> 8),
                    (uint8_t)stream};
    buf_add(b, h, 9);
}

/* --- the run ----------------------------------------------------------------------------- */

typedef struct {
    uint8_t expect;
    const uint8_t *message;
    uint32_t length;
} request_t;

enum { PENDING = 0, OK = 1, FAILED = 2 };

typedef struct {
    int64_t due, latency, lag;
    int verdict, state;
    const char *error; /* interned */
} result_t;

typedef struct {
    int index;      /* request, or -1 once finished */
    int status;     /* grpc-status, -1 until the trailers */
    char *message;  /* grpc-message */
    buf_t data;     /* the answer's DATA */
} stream_t;

typedef struct {
    int fd;
    const char *failure;   /* why the connection is unusable, or NULL */
    buf_t in, out;
    int64_t window;        /* the server's connection-level send window */
    uint32_t next;         /* next stream id */
    stream_t *streams;     /* by (id - 1) / 2 */
    size_t nstreams;
    table_t table;
    buf_t block;           /* a header block being received (HEADERS + CONTINUATION) */
    uint32_t block_stream;
    int block_ends_stream;
    int *waiting;          /* requests held back for want of send window */
    size_t nwaiting, capwaiting;
} conn_t;

static request_t *requests;
static size_t nrequests;
static result_t *results;
static size_t unfinished;
static conn_t *conns;
static size_t nconns;
static buf_t header_block;
static int epoll_fd;

/* Interned error texts, counted at the end. */
static char **errors_seen;
static size_t nerrors_seen;

static const char *intern(const char *text) {
    for (size_t i = 0; i < nerrors_seen; i++)
        if (!strcmp(errors_seen[i], text)) return errors_seen[i];
    errors_seen = must(realloc(errors_seen, (nerrors_seen + 1) * sizeof(char *)));
    return errors_seen[nerrors_seen++] = must(strdup(text));
}

static void finish(int index, int verdict, const char *error) {
    result_t *r = &results[index];
    if (r->state != PENDING) return;
    r->latency = now_ns() - r->due;
    r->verdict = verdict;
    r->state = error ? FAILED : OK;
    r->error = error ? intern(error) : NULL;
    unfinished--;
}

/* Field 1 (varint) of a CheckUseResponse; 0 when absent, -1 when malformed. */
static int verdict_of(const uint8_t *m, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint64_t key = 0;
        int shift = 0;
        do {
            if (i >= n || shift > 63) return -1;
            key |= (uint64_t)(m[i] & 0x7f) << shift;
            shift += 7;
        } while (m[i++] & 0x80);
        uint64_t value = 0;
        switch (key & 7) {
        case 0:
            shift = 0;
            do {
                if (i >= n || shift > 63) return -1;
                value |= (uint64_t)(m[i] & 0x7f) << shift;
                shift += 7;
            } while (m[i++] & 0x80);
            if ((key >> 3) == 1) return (int)value;
            break;
        case 1: i += 8; break;
        case 2:
            shift = 0;
            do {
                if (i >= n || shift > 63) return -1;
                value |= (uint64_t)(m[i] & 0x7f) << shift;
                shift += 7;
            } while (m[i++] & 0x80);
            i += value;
            break;
        case 5: i += 4; break;
        default: return -1;
        }
    }
    return 0;
}

static void fail_connection(conn_t *c, const char *why);

static void flush(conn_t *c) {
    while (c->out.len && !c->failure) {
        ssize_t n = write(c->fd, c->out.data, c->out.len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { /* the rest when the socket can take it */
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &ev);
                return;
            }
            fail_connection(c, strerror(errno));
            return;
        }
        buf_consume(&c->out, (size_t)n);
    }
}

static stream_t *stream_of(conn_t *c, uint32_t id) {
    if (!(id & 1)) return NULL;
    size_t slot = (id - 1) / 2;
    return slot < c->nstreams && c->streams[slot].index >= 0 ? &c->streams[slot] : NULL;
}

/* Queues one request's HEADERS and DATA frames (the caller flushes). */
static void send_request(conn_t *c, int index) {
    request_t *rq = &requests[index];
    if (c->failure) {
        finish(index, 0, c->failure);
        return;
    }
    uint32_t body = 5 + rq->length;
    if (c->window < body) { /* wait for the server's WINDOW_UPDATE */
        if (c->nwaiting == c->capwaiting) {
            c->capwaiting = c->capwaiting ? c->capwaiting * 2 : 256;
            c->waiting = must(realloc(c->waiting, c->capwaiting * sizeof(int)));
        }
        c->waiting[c->nwaiting++] = index;
        return;
    }
    c->window -= body;
    uint32_t id = c->next;
    c->next += 2;
    size_t slot = (id - 1) / 2;
    if (slot >= c->nstreams) die("stream table full");
    c->streams[slot] = (stream_t){.index = index, .status = -1};
    results[index].lag = now_ns() - results[index].due;
    frame_header(&c->out, (uint32_t)header_block.len, HEADERS, END_HEADERS, id);
    buf_add(&c->out, header_block.data, header_block.len);
    frame_header(&c->out, body, DATA, END_STREAM, id);
    uint8_t prefix[5] = {0, (uint8_t)(rq->length >> 24), (uint8_t)(rq->length >> 16),
                         (uint8_t)(rq->length >> 8), (uint8_t)rq->length};
    buf_add(&c->out, prefix, 5);
    buf_add(&c->out, rq->message, rq->length);
}

static void end_stream(stream_t *s) {
    int index = s->index;
    s->index = -1;
    char error[512];
    if (s->status != 0) {
        snprintf(error, sizeof error, "grpc-status %d: %s", s->status,
                 s->message ? s->message : "");
        finish(index, 0, error);
    } else if (s->data.len < 5 || s->data.data[0] != 0 ||
               ((uint32_t)s->data.data[1] << 24 | (uint32_t)s->data.data[2] << 16 |
                (uint32_t)s->data.data[3] << 8 | s->data.data[4]) != s->data.len - 5) {
        finish(index, 0, "malformed response message");
    } else {
        finish(index, verdict_of(s->data.data + 5, s->data.len - 5), NULL);
    }
    free(s->message);
    free(s->data.data);
    s->message = NULL;
    s->data = (buf_t){0};
}

static void on_field(const char *name, const char *value, void *arg) {
    stream_t *s = arg;
    if (!s) return;
    if (!strcmp(name, "grpc-status")) {
        s->status = atoi(value);
    } else if (!strcmp(name, "grpc-message")) {
        free(s->message);
        s->message = must(strdup(value)); /* percent-encoded; shown as it came */
    }
}

static void header_block_done(conn_t *c) {
    stream_t *s = stream_of(c, c->block_stream);
    if (!hpack_decode(&c->table, c->block.data, c->block.len, on_field, s))
        die("malformed header block from the server");
    if (s && c->block_ends_stream) end_stream(s);
    c->block.len = 0;
}

/* Ends every call on a connection that broke; later requests for it fail at once. */
static void fail_connection(conn_t *c, const char *why) {
    if (!c->failure) {
        c->failure = intern(why);
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
        c->out.len = 0;
    }
    for (size_t i = 0; i < c->nstreams; i++)
        if (c->streams[i].index >= 0) {
            finish(c->streams[i].index, 0, why);
            c->streams[i].index = -1;
        }
    for (size_t i = 0; i < c->nwaiting; i++) finish(c->waiting[i], 0, why);
    c->nwaiting = 0;
}

/* Handles every whole frame in the connection's input. */
static void on_frames(conn_t *c) {
    size_t at = 0;
    while (!c->failure && c->in.len - at >= 9) {
        uint8_t *h = c->in.data + at;
        uint32_t length = (uint32_t)h[0] << 16 | (uint32_t)h[1] << 8 | h[2];
        if (c->in.len - at < 9 + length) break;
        uint8_t type = h[3], flags = h[4];
        uint32_t stream = ((uint32_t)h[5] << 24 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 8 | h[8])
                          & 0x7fffffff;
        uint8_t *p = h + 9;
        at += 9 + length;
        switch (type) {
        case DATA: {
            stream_t *s = stream_of(c, stream);
            uint32_t pad = 0, skip = 0;
            if (flags & PADDED) { pad = p[0]; skip = 1; }
            if (s && length >= skip + pad) {
                buf_add(&s->data, p + skip, length - skip - pad);
                if (flags & END_STREAM) end_stream(s);
            }
            break;
        }
        case HEADERS: {
            uint32_t skip = 0, pad = 0;
            if (flags & PADDED) { pad = p[0]; skip = 1; }
            if (flags & PRIORITY) skip += 5;
            if (length < skip + pad) die("malformed HEADERS frame");
            c->block.len = 0;
            buf_add(&c->block, p + skip, length - skip - pad);
            c->block_stream = stream;
            c->block_ends_stream = flags & END_STREAM;
            if (flags & END_HEADERS) header_block_done(c);
            break;
        }
        case CONTINUATION:
            buf_add(&c->block, p, length);
            if (flags & END_HEADERS) header_block_done(c);
            break;
        case RST_STREAM: {
            stream_t *s = stream_of(c, stream);
            if (s) {
                char error[64];
                uint32_t code = length >= 4 ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                                                  (uint32_t)p[2] << 8 | p[3] : 0;
                snprintf(error, sizeof error, "stream reset (HTTP/2 error %u)", code);
                int index = s->index;
                s->index = -1;
                finish(index, 0, error);
            }
            break;
        }
        case SETTINGS:
            if (!(flags & ACK)) {
                frame_header(&c->out, 0, SETTINGS, ACK, 0);
                flush(c);
            }
            break;
        case PING:
            if (!(flags & ACK) && length == 8) {
                frame_header(&c->out, 8, PING, ACK, 0);
                buf_add(&c->out, p, 8);
                flush(c);
            }
            break;
        case WINDOW_UPDATE:
            if (stream == 0 && length >= 4) {
                c->window += ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                              (uint32_t)p[2] << 8 | p[3]) & 0x7fffffff;
                size_t n = c->nwaiting;
                int *held = c->waiting;
                c->waiting = NULL;
                c->nwaiting = c->capwaiting = 0;
                for (size_t i = 0; i < n; i++) send_request(c, held[i]);
                free(held);
                flush(c);
            }
            break;
        case GOAWAY:
            fail_connection(c, "the server sent GOAWAY");
            break;
        default: /* PRIORITY, PUSH_PROMISE (refused by our SETTINGS), unknown: ignored */
            break;
        }
    }
    if (c->failure) c->in.len = 0;
    else buf_consume(&c->in, at);
}

static void on_readable(conn_t *c) {
    for (;;) {
        buf_reserve(&c->in, 65536);
        ssize_t n = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len);
        if (n > 0) {
            c->in.len += (size_t)n;
            continue;
        }
        if (n == 0) {
            fail_connection(c, "the server closed the connection");
            return;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        fail_connection(c, strerror(errno));
        return;
    }
    on_frames(c);
}

static void connect_to(conn_t *c, const char *target, size_t streams) {
    char host[256];
    const char *colon = strrchr(target, ':');
    if (!colon || (size_t)(colon - target) >= sizeof host) die("bad target %s", target);
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *found;
    if (getaddrinfo(host, colon + 1, &hints, &found)) die("cannot resolve %s", target);
    c->fd = socket(found->ai_family, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, found->ai_addr, found->ai_addrlen))
        die("connect %s: %s", target, strerror(errno));
    freeaddrinfo(found);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    c->window = 65535;
    c->next = 1;
    c->table.max = MAX_TABLE;
    c->nstreams = streams;
    c->streams = must(calloc(streams, sizeof(stream_t)));
    for (size_t i = 0; i < streams; i++) c->streams[i].index = -1;
    /* Preface; SETTINGS: no push, large stream windows; then a large connection window. */
    buf_add(&c->out, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
    frame_header(&c->out, 12, SETTINGS, 0, 0);
    uint8_t settings[12] = {0, 2, 0, 0, 0, 0, /* ENABLE_PUSH 0 */
                            0, 4, (uint8_t)(RECEIVE_WINDOW >> 24), (uint8_t)(RECEIVE_WINDOW >> 16),
                            (uint8_t)(RECEIVE_WINDOW >> 8), (uint8_t)RECEIVE_WINDOW};
    buf_add(&c->out, settings, 12);
    uint32_t grow = RECEIVE_WINDOW - 65535;
    frame_header(&c->out, 4, WINDOW_UPDATE, 0, 0);
    uint8_t increment[4] = {(uint8_t)(grow >> 24), (uint8_t)(grow >> 16), (uint8_t)(grow >> 8),
                            (uint8_t)grow};
    buf_add(&c->out, increment, 4);
    flush(c);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void poll_once(int timeout_ms, int timer_fd, int *timer_fired) {
    struct epoll_event events[64];
    int n = epoll_wait(epoll_fd, events, 64, timeout_ms);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        if (events[i].data.ptr == NULL) {
            uint64_t expirations;
            if (read(timer_fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                die("timerfd: %s", strerror(errno));
            *timer_fired = 1;
            continue;
        }
        conn_t *c = events[i].data.ptr;
        if (events[i].events & EPOLLOUT) {
            flush(c);
            if (!c->out.len) {
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &ev);
            }
        }
        if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
    }
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
        else putchar(*s);
    }
    putchar('"');
}

int main(int argc, char **argv) {
    const char *targets = NULL, *path = NULL, *authorization = "";
    double rate = 1000, timeout_s = 10;
    int per_target = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-targets")) targets = argv[i + 1];
        else if (!strcmp(argv[i], "-rate")) rate = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "-requests")) path = argv[i + 1];
        else if (!strcmp(argv[i], "-authorization")) authorization = argv[i + 1];
        else if (!strcmp(argv[i], "-connections")) per_target = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-timeout")) timeout_s = atof(argv[i + 1]);
        else die("unknown option %s", argv[i]);
    }
    if (!targets || !path || rate <= 0 || per_target < 1) die("usage: see the comment at the top");
    signal(SIGPIPE, SIG_IGN); /* a closed connection is an error of its calls, not the end */
    huffman_init();

    /* The requests. */
    FILE *file = fopen(path, "rb");
    if (!file) die("%s: %s", path, strerror(errno));
    struct stat st;
    fstat(fileno(file), &st);
    uint8_t *data = must(malloc((size_t)st.st_size + 1));
    if (fread(data, 1, (size_t)st.st_size, file) != (size_t)st.st_size) die("cannot read %s", path);
    fclose(file);
    size_t cap = 1024;
    requests = must(malloc(cap * sizeof(request_t)));
    for (size_t at = 0; at < (size_t)st.st_size;) {
        if ((size_t)st.st_size - at < 5) die("truncated record header");
        uint32_t n = (uint32_t)data[at] << 24 | (uint32_t)data[at + 1] << 16 |
                     (uint32_t)data[at + 2] << 8 | data[at + 3];
        if ((size_t)st.st_size - at - 5 < n) die("truncated record");
        if (nrequests == cap) requests = must(realloc(requests, (cap *= 2) * sizeof(request_t)));
        requests[nrequests++] = (request_t){data[at + 4], data + at + 5, n};
        at += 5 + n;
    }
    if (!nrequests) die("no requests in %s", path);

    /* Connections, round-robin over the targets. */
    epoll_fd = epoll_create1(0);
    char *list = must(strdup(targets)), *save = NULL, *authority = NULL;
    size_t ntargets = 0;
    for (char *t = list; *t; t++) ntargets += *t == ',';
    ntargets++;
    nconns = ntargets * (size_t)per_target;
    conns = must(calloc(nconns, sizeof(conn_t)));
    size_t streams = nrequests / nconns + 2;
    size_t k = 0;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        authority = t;
        for (int i = 0; i < per_target; i++) connect_to(&conns[k++], t, streams);
    }
    if (k != nconns) die("bad -targets");

    /* The request header block, the same for every request. */
    char timeout_text[32];
    snprintf(timeout_text, sizeof timeout_text, "%lldm", (long long)(timeout_s * 1000));
    hpack_put_int(&header_block, 0x80, 7, 3); /* :method POST */
    hpack_put_int(&header_block, 0x80, 7, 6); /* :scheme http */
    hpack_put_literal(&header_block, ":path", METHOD);
    hpack_put_literal(&header_block, ":authority", authority);
    hpack_put_literal(&header_block, "content-type", "application/grpc");
    hpack_put_literal(&header_block, "te", "trailers");
    hpack_put_literal(&header_block, "grpc-timeout", timeout_text);
    hpack_put_literal(&header_block, "authorization", authorization);

    /* One call per connection before the clock starts: set-up is not measured. (Their
       results go in slots after the requests'; request 0's message.) */
    results = must(calloc(nrequests + nconns, sizeof(result_t)));
    requests = must(realloc(requests, (nrequests + nconns) * sizeof(request_t)));
    int dummy = 0;
    unfinished = nconns;
    for (size_t i = 0; i < nconns; i++) {
        requests[nrequests + i] = requests[0];
        results[nrequests + i].due = now_ns();
        send_request(&conns[i], (int)(nrequests + i));
        flush(&conns[i]);
    }
    int64_t warm_deadline = now_ns() + (int64_t)(timeout_s * 1e9);
    while (unfinished && now_ns() < warm_deadline) poll_once(100, -1, &dummy);
    for (size_t i = 0; i < nconns; i++)
        if (results[nrequests + i].state != OK)
            die("warm-up call failed: %s",
                results[nrequests + i].error ? results[nrequests + i].error : "no answer");

    /* The schedule: a timerfd set to the next due time. */
    int timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, timer_fd, &tev);
    double interval = 1e9 / rate;
    int64_t start = now_ns() + 10000000;
    for (size_t i = 0; i < nrequests; i++) results[i].due = start + (int64_t)(i * interval);
    unfinished = nrequests;
    size_t sent = 0;
    while (sent < nrequests) {
        int64_t now = now_ns();
        int any = 0;
        for (; sent < nrequests && results[sent].due <= now; sent++) {
            send_request(&conns[sent % nconns], (int)sent);
            any = 1;
        }
        if (any)
            for (size_t i = 0; i < nconns; i++) flush(&conns[i]);
        if (sent == nrequests) break;
        struct itimerspec when = {.it_value = {.tv_sec = results[sent].due / 1000000000,
                                               .tv_nsec = results[sent].due % 1000000000}};
        timerfd_settime(timer_fd, TFD_TIMER_ABSTIME, &when, NULL);
        int fired = 0;
        while (!fired) poll_once(-1, timer_fd, &fired);
    }
    int64_t deadline = results[nrequests - 1].due + (int64_t)((timeout_s + 1) * 1e9);
    while (unfinished && now_ns() < deadline) poll_once(100, timer_fd, &dummy);
    for (size_t i = 0; i < nrequests; i++)
        if (results[i].state == PENDING) finish((int)i, 0, "no answer within the deadline");
    double elapsed = (double)(now_ns() - start) / 1e9;

    /* The report. */
    size_t wrong = 0;
    int64_t max_lag = 0;
    size_t *counts = must(calloc(nerrors_seen + 1, sizeof(size_t)));
    for (size_t i = 0; i < nrequests; i++) {
        result_t *r = &results[i];
        if (r->lag > max_lag) max_lag = r->lag;
        if (r->state == FAILED) {
            for (size_t e = 0; e < nerrors_seen; e++)
                if (errors_seen[e] == r->error) counts[e]++;
        } else if (requests[i].expect && r->verdict != requests[i].expect) {
            wrong++;
        }
    }
    printf("{\"requests\": %zu, \"elapsed_s\": %.6f, \"errors\": {", nrequests, elapsed);
    int first = 1;
    for (size_t e = 0; e < nerrors_seen; e++) {
        if (!counts[e]) continue;
        if (!first) printf(", ");
        first = 0;
        json_string(errors_seen[e]);
        printf(": %zu", counts[e]);
    }
    printf("}, \"wrong_verdicts\": %zu, \"max_send_lag_us\": %lld, \"latencies_us\": [", wrong,
           (long long)(max_lag / 1000));
    first = 1;
    for (size_t i = 0; i < nrequests; i++) {
        if (results[i].state != OK) continue;
        printf(first ? "%lld" : ", %lld", (long long)(results[i].latency / 1000));
        first = 0;
    }
    printf("]}\n");
    return 0;
}
