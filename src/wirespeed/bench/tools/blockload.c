/*
 * blockload: the lab's large-body HTTP/1.1 load client, and the bare sendfile server that
 * measures the loopback ceiling the same way.
 *
 * Why C (measured on the lab's 2-core box, see load.py): wrk's 8 KiB reads and per-byte parser
 * capped 64 MiB transfers at 1.1-1.5 GB/s where this client got 2.1-4.4 GB/s from the same
 * server. A careful Python client matches it at 1 MiB reads, but the instrument must stay
 * negligible at any block size and connection count and keep interpreter jitter out of the p99,
 * so the client is the thinnest possible loop: epoll, one recv() of up to BLOCK bytes per
 * readiness event, no copies besides the kernel's copy into one reused buffer. load.py compiles
 * it with the system C compiler on first use (about 0.2 s) and caches it by source digest.
 *
 *   blockload client --port P --path /files/64m.bin [--host 127.0.0.1] [--connections 4]
 *                    [--duration 5] [--block 1048576] [--expect 200]
 *                    [--range-size N --range-span SIZE --seed S] [--header "K: V"]
 *                    [--sink read|splice]
 *     Keeps CONNECTIONS keep-alive connections busy for DURATION seconds, one request in flight
 *     per connection (no pipelining: browsers and video players do not pipeline). With
 *     --range-size every request asks for a random, unaligned byte range of that size
 *     inside [0, SPAN), like a seeking video player. Prints one JSON object on stdout:
 *     requests, errors, body_bytes (payload only), header_bytes (response heads), elapsed and
 *     latency percentiles (request sent -> last body byte) in milliseconds. Bytes are counted as
 *     they arrive, so a 64 MiB response cut by the deadline still counts the part received.
 *     --sink splice moves body bytes socket -> pipe -> /dev/null with splice(2) instead of
 *     recv() into a buffer: the client then copies nothing, so a zero-copy server is no longer
 *     held back by the client's memory copy and what is measured is the server's own cost.
 *
 *   blockload serve --port P --file F
 *     The loopback ceiling: answers every GET with F (or the asked single byte range) using a
 *     blocking sendfile(2) loop, one thread per connection, no logging, no routing. It prints
 *     "listening on http://127.0.0.1:P" when ready.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A response head larger than this is an error: real servers send a few hundred bytes. */
#define HEAD_MAX 16384
/* Arbitrary caps for static arrays: the lab's scenarios use at most 64 connections, 2 headers. */
#define MAX_CONNECTIONS 1024
#define MAX_HEADERS 8
/* Events per epoll_wait: arbitrary; with <= 64 connections one call drains them all. */
#define EVENTS 64

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "blockload: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* ------------------------------------------------------------------------------------------ */
/* client                                                                                      */

enum { ST_SEND, ST_HEAD, ST_BODY };

typedef struct {
    int fd;
    int state;
    char req[2048];
    size_t req_len, req_off;
    char head[HEAD_MAX];
    size_t head_len;
    long long remaining;
    int close_after, status_ok;
    double t_start;
} conn_t;

static struct {
    const char *host, *path;
    int port, connections, expect;
    double duration;
    size_t block;
    long long range_size, range_span;
    uint64_t seed;
    const char *headers[MAX_HEADERS];
    int n_headers;
    int splice_sink;
} opt = {"127.0.0.1", "/", 0, 4, 200, 5.0, 1 << 20, 0, 0, 1, {0}, 0, 0};

static struct {
    long long requests, errors, body_bytes, header_bytes, connects;
    double *lat;
    size_t n_lat, cap_lat;
    char first_error[256];
} st;

static int epfd;
static char *block_buf;
/* --sink splice: body bytes go socket -> pipe -> /dev/null and never reach user memory. */
static int sink_pipe[2] = {-1, -1}, devnull = -1;

/* Consume up to `want` body bytes of fd: recv() into the block buffer, or splice them away. */
static ssize_t take_body(int fd, size_t want) {
    if (!opt.splice_sink) return recv(fd, block_buf, want, 0);
    ssize_t k = splice(fd, NULL, sink_pipe[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    for (ssize_t left = k; left > 0;) {
        /* The pipe is empty before every call, so this drains exactly what came in. */
        ssize_t m = splice(sink_pipe[0], NULL, devnull, NULL, (size_t)left, SPLICE_F_MOVE);
        if (m <= 0) die("splice to /dev/null");
        left -= m;
    }
    return k;
}

static uint64_t xorshift(void) {
    uint64_t x = opt.seed;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return opt.seed = x;
}

static void note_error(const char *msg) {
    st.errors++;
    if (!st.first_error[0]) snprintf(st.first_error, sizeof st.first_error, "%s", msg);
}

static void build_request(conn_t *c) {
    int n = snprintf(c->req, sizeof c->req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n", opt.path,
                     opt.host, opt.port);
    if (opt.range_size > 0) {
        long long span = opt.range_span - opt.range_size + 1;
        long long off = span > 0 ? (long long)(xorshift() % (uint64_t)span) : 0;
        n += snprintf(c->req + n, sizeof c->req - (size_t)n, "Range: bytes=%lld-%lld\r\n", off,
                      off + opt.range_size - 1);
    }
    for (int i = 0; i < opt.n_headers; i++)
        n += snprintf(c->req + n, sizeof c->req - (size_t)n, "%s\r\n", opt.headers[i]);
    n += snprintf(c->req + n, sizeof c->req - (size_t)n, "\r\n");
    c->req_len = (size_t)n;
    c->req_off = 0;
}

static int open_conn(conn_t *c) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &a.sin_addr) != 1) {
        fprintf(stderr, "blockload: --host must be an IPv4 address\n");
        exit(2);
    }
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    /* A blocking connect: on loopback it completes at once, and it keeps the loop simple. */
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    st.connects++;
    c->state = ST_SEND;
    build_request(c);
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl");
    return 0;
}

static void close_conn(conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
}

static void record_latency(double ms) {
    if (st.n_lat == st.cap_lat) {
        st.cap_lat = st.cap_lat ? st.cap_lat * 2 : 4096;
        st.lat = realloc(st.lat, st.cap_lat * sizeof(double));
        if (!st.lat) die("realloc");
    }
    st.lat[st.n_lat++] = ms;
}

/* Parse the head in c->head[0..end): status, Content-Length, Connection: close. */
static int parse_head(conn_t *c, size_t end) {
    if (end < 12 || strncmp(c->head, "HTTP/1.", 7) != 0) return -1;
    int status = atoi(c->head + 9);
    c->status_ok = status == opt.expect;
    c->close_after = strncmp(c->head, "HTTP/1.0", 8) == 0;
    long long length = -1;
    char *line = memchr(c->head, '\n', end);
    while (line && (size_t)(line - c->head) < end) {
        line++;
        if (strncasecmp(line, "content-length:", 15) == 0) length = atoll(line + 15);
        if (strncasecmp(line, "connection:", 11) == 0) {
            const char *v = line + 11;
            while (*v == ' ') v++;
            c->close_after = strncasecmp(v, "close", 5) == 0;
        }
        if (strncasecmp(line, "transfer-encoding:", 18) == 0) return -2;
        line = memchr(line, '\n', end - (size_t)(line - c->head));
    }
    if (length < 0) return -2;
    c->remaining = length;
    return 0;
}

static void finish_response(conn_t *c, double deadline) {
    double t = now();
    if (c->status_ok) {
        st.requests++;
        record_latency((t - c->t_start) * 1e3);
    } else {
        note_error("unexpected status");
    }
    if (c->close_after) {
        close_conn(c);
        if (t < deadline && open_conn(c) != 0) note_error("reconnect failed");
        return;
    }
    if (t >= deadline) return;
    c->state = ST_SEND;
    build_request(c);
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void on_event(conn_t *c, double deadline) {
    if (c->state == ST_SEND) {
        if (c->req_off == 0) c->t_start = now();
        ssize_t k = send(c->fd, c->req + c->req_off, c->req_len - c->req_off, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EAGAIN) return;
            note_error("send failed");
            close_conn(c);
            if (open_conn(c) != 0) note_error("reconnect failed");
            return;
        }
        c->req_off += (size_t)k;
        if (c->req_off < c->req_len) return;
        c->state = ST_HEAD;
        c->head_len = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        return;
    }
    if (c->state == ST_HEAD) {
        ssize_t k = recv(c->fd, c->head + c->head_len, HEAD_MAX - 1 - c->head_len, 0);
        if (k < 0 && errno == EAGAIN) return;
        if (k <= 0) {
            note_error("connection closed before the response head");
            close_conn(c);
            if (now() < deadline && open_conn(c) != 0) note_error("reconnect failed");
            return;
        }
        c->head_len += (size_t)k;
        c->head[c->head_len] = 0;
        char *e = memmem(c->head, c->head_len, "\r\n\r\n", 4);
        if (!e) {
            if (c->head_len >= HEAD_MAX - 1) {
                fprintf(stderr, "blockload: response head larger than %d bytes\n", HEAD_MAX);
                exit(3);
            }
            return;
        }
        size_t end = (size_t)(e - c->head) + 4;
        int r = parse_head(c, end);
        if (r == -2) {
            fprintf(stderr, "blockload: response without Content-Length (chunked?) from %s\n",
                    opt.path);
            exit(3);
        }
        if (r != 0) {
            fprintf(stderr, "blockload: malformed response head\n");
            exit(3);
        }
        long long extra = (long long)(c->head_len - end);
        st.header_bytes += (long long)end;
        st.body_bytes += extra;
        c->remaining -= extra;
        if (c->remaining <= 0) {
            finish_response(c, deadline);
            return;
        }
        c->state = ST_BODY;
        return;
    }
    /* ST_BODY: one read of up to one block per readiness event keeps connections fair. */
    size_t want = (size_t)c->remaining < opt.block ? (size_t)c->remaining : opt.block;
    ssize_t k = take_body(c->fd, want);
    if (k < 0 && errno == EAGAIN) return;
    if (k <= 0) {
        note_error("connection closed mid-body");
        close_conn(c);
        if (now() < deadline && open_conn(c) != 0) note_error("reconnect failed");
        return;
    }
    st.body_bytes += k;
    c->remaining -= k;
    if (c->remaining == 0) finish_response(c, deadline);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double p) {
    if (!st.n_lat) return 0.0;
    size_t i = (size_t)(p / 100.0 * (double)(st.n_lat - 1) + 0.5);
    return st.lat[i];
}

static int run_client(void) {
    static conn_t conns[MAX_CONNECTIONS];
    block_buf = malloc(opt.block);
    if (!block_buf) die("malloc");
    if (opt.splice_sink) {
        if (pipe2(sink_pipe, O_CLOEXEC) != 0) die("pipe2");
        /* One block per splice: grow the pipe to the block size (capped by fs.pipe-max-size,
         * 1 MiB by default; a smaller pipe only means more, smaller splices). */
        fcntl(sink_pipe[1], F_SETPIPE_SZ, (int)opt.block);
        devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (devnull < 0) die("/dev/null");
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    double start = now(), deadline = start + opt.duration;
    for (int i = 0; i < opt.connections; i++) {
        if (open_conn(&conns[i]) != 0) {
            fprintf(stderr, "blockload: cannot connect to %s:%d: %s\n", opt.host, opt.port,
                    strerror(errno));
            return 2;
        }
    }
    struct epoll_event evs[EVENTS];
    for (;;) {
        double t = now();
        if (t >= deadline) break;
        int timeout = (int)((deadline - t) * 1e3) + 1;
        int n = epoll_wait(epfd, evs, EVENTS, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, deadline);
    }
    double elapsed = now() - start;
    qsort(st.lat, st.n_lat, sizeof(double), cmp_double);
    double sum = 0;
    for (size_t i = 0; i < st.n_lat; i++) sum += st.lat[i];
    printf("{\"requests\": %lld, \"errors\": %lld, \"first_error\": \"%s\", "
           "\"body_bytes\": %lld, \"header_bytes\": %lld, \"connects\": %lld, "
           "\"elapsed\": %.6f, \"block\": %zu, \"latency_ms\": {\"avg\": %.4f, \"p50\": %.4f, "
           "\"p75\": %.4f, \"p90\": %.4f, \"p99\": %.4f, \"max\": %.4f}}\n",
           st.requests, st.errors, st.first_error, st.body_bytes, st.header_bytes, st.connects,
           elapsed, opt.block, st.n_lat ? sum / (double)st.n_lat : 0.0, pct(50), pct(75),
           pct(90), pct(99), st.n_lat ? st.lat[st.n_lat - 1] : 0.0);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* bare sendfile server (the loopback ceiling)                                                */

static const char *serve_file;
static long long serve_size;

static void *serve_conn(void *arg) {
    int fd = (int)(intptr_t)arg;
    int file = open(serve_file, O_RDONLY | O_CLOEXEC);
    char buf[8192];
    size_t len = 0;
    if (file < 0) goto out;
    for (;;) {
        char *e;
        while (!(e = memmem(buf, len, "\r\n\r\n", 4))) {
            if (len == sizeof buf) goto out;
            ssize_t k = recv(fd, buf + len, sizeof buf - len, 0);
            if (k <= 0) goto out;
            len += (size_t)k;
        }
        size_t end = (size_t)(e - buf) + 4;
        long long first = 0, last = serve_size - 1;
        int partial = 0;
        char *r = memmem(buf, end, "\r\nRange: bytes=", 15);
        if (r && sscanf(r + 15, "%lld-%lld", &first, &last) == 2) partial = 1;
        if (last >= serve_size) last = serve_size - 1;
        char head[256];
        int n = partial ? snprintf(head, sizeof head,
                                   "HTTP/1.1 206 Partial Content\r\nContent-Length: %lld\r\n"
                                   "Content-Range: bytes %lld-%lld/%lld\r\n\r\n",
                                   last - first + 1, first, last, serve_size)
                        : snprintf(head, sizeof head,
                                   "HTTP/1.1 200 OK\r\nContent-Length: %lld\r\n\r\n",
                                   serve_size);
        if (send(fd, head, (size_t)n, MSG_NOSIGNAL | MSG_MORE) != n) goto out;
        off_t off = first;
        long long left = last - first + 1;
        while (left > 0) {
            ssize_t k = sendfile(fd, file, &off, (size_t)left);
            if (k <= 0) goto out;
            left -= k;
        }
        memmove(buf, buf + end, len - end);
        len -= end;
    }
out:
    if (file >= 0) close(file);
    close(fd);
    return NULL;
}

static int run_server(void) {
    struct stat sb;
    if (stat(serve_file, &sb) != 0) die(serve_file);
    serve_size = sb.st_size;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)opt.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
    /* Backlog: far above the lab's connection counts, so no SYN is ever dropped. */
    if (listen(ls, 1024) != 0) die("listen");
    printf("listening on http://127.0.0.1:%d\n", opt.port);
    fflush(stdout);
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        if (pthread_create(&t, NULL, serve_conn, (void *)(intptr_t)fd) != 0) {
            close(fd);
            continue;
        }
        pthread_detach(t);
    }
    return 0; /* not reached: the lab stops the server with a signal */
}

/* ------------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: blockload client|serve --port P ...\n");
        return 2;
    }
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--host")) opt.host = v;
        else if (!strcmp(k, "--port")) opt.port = atoi(v);
        else if (!strcmp(k, "--path")) opt.path = v;
        else if (!strcmp(k, "--connections")) opt.connections = atoi(v);
        else if (!strcmp(k, "--duration")) opt.duration = atof(v);
        else if (!strcmp(k, "--block")) opt.block = (size_t)atoll(v);
        else if (!strcmp(k, "--expect")) opt.expect = atoi(v);
        else if (!strcmp(k, "--range-size")) opt.range_size = atoll(v);
        else if (!strcmp(k, "--range-span")) opt.range_span = atoll(v);
        else if (!strcmp(k, "--seed")) opt.seed = (uint64_t)atoll(v) | 1;
        else if (!strcmp(k, "--file")) serve_file = v;
        else if (!strcmp(k, "--sink")) opt.splice_sink = !strcmp(v, "splice");
        else if (!strcmp(k, "--header") && opt.n_headers < MAX_HEADERS) opt.headers[opt.n_headers++] = v;
        else {
            fprintf(stderr, "blockload: unknown option %s\n", k);
            return 2;
        }
    }
    if (opt.port <= 0 || opt.connections < 1 || opt.connections > MAX_CONNECTIONS ||
        opt.block < 4096) {
        fprintf(stderr, "blockload: bad --port, --connections (1..%d) or --block (>= 4096)\n",
                MAX_CONNECTIONS);
        return 2;
    }
    if (!strcmp(argv[1], "client")) return run_client();
    if (!strcmp(argv[1], "serve") && serve_file) return run_server();
    fprintf(stderr, "blockload: first argument must be client or serve (serve needs --file)\n");
    return 2;
}
