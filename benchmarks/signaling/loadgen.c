/*
 * The signaling load generator: one C process, epoll, WebSocket framing by hand.
 *
 *   loadgen --url ws://127.0.0.1:PORT/[,ws://...] --protocol holepunch|peerjs|echo
 *           --mode relay|idle [--pairs 200] [--window 8] [--warmup 2] [--duration 10]
 *           [--rate 2000] [--connections 10000] [--payload-bytes 256]
 *           [--local-addresses 8] [--connect-concurrency 200] [--setup-timeout 120]
 *           [--hold 120] [--dump FILE]
 *
 * Why C and not a WebSocket library: the servers measured here relay a message for
 * 5-15 µs of CPU, and a generator in Node.js with the `ws` client spends as much per
 * message as the server does (one send() system call and one event per message). On a
 * two-core machine it then takes a whole core, and no server can be seen to use more than
 * the other one. This generator batches: every frame due on a connection goes out in one
 * write(), every frame that arrived comes in with one read(), so it spends about 1 µs per
 * message and leaves the second core to the server. The framing it needs (client frames,
 * masked; server frames, unmasked, text, ping and close) is a few dozen lines; no
 * well-kept C WebSocket client offers batched writes across frames without its own event
 * loop, and a benchmark wants no build dependencies beyond gcc.
 *
 * Dialects: `holepunch` (welcome, register, offer {to, offer}; the server stamps `from`),
 * `peerjs` (GET /peerjs?key=peerjs&id=ID&token=T, OPEN, OFFER {dst, payload}) and `echo`
 * (a null server that sends every message back to its sender: the generator's ceiling).
 *
 * relay mode: 2 x pairs connections; connection 2k sends offers to 2k+1 and back.
 *   1. full load: every connection keeps `window` offers in flight to its partner (closed
 *      loop); after `warmup` s, offers delivered during `duration` s give messages/s.
 *   2. paced: `rate` offers/s in total, round-robin over the connections, each sent at its
 *      scheduled time and stamped with it; latency = arrival - scheduled time (no
 *      coordinated omission), over `duration` s after `warmup` s.
 * idle mode: open `connections` connections (each registered), print
 *   {"event": "ready", ...}, hold them until a line arrives on stdin (or `hold` s), close.
 *
 * Output: JSON lines on stdout, as the Node.js generator it replaced printed them:
 * "window-start"/"window-end" mark the full-load window (the caller samples the server's
 * CPU time then), "paced-start" the paced phase's first offer (after the full load's
 * offers in flight have arrived), and the last line is {"event": "result", ...}; its
 * paced.startMs is when the paced phase began on CLOCK_MONOTONIC (ms), the origin of the
 * send times in --dump. Every phase has a deadline; the process exits by itself. Only
 * connects to the URLs it is given.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* --- options ------------------------------------------------------------------------- */

static struct {
    const char *url, *protocol, *mode, *dump;
    double pairs, window, warmup, duration, rate, connections, payload_bytes;
    double local_addresses, connect_concurrency, setup_timeout, hold;
} opt = {"ws://127.0.0.1:8080/", "holepunch", "relay", NULL, 200, 8, 2, 10, 2000, 10000, 256,
         8, 200, 120, 120};

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char text[512];
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    printf("{\"event\": \"result\", \"mode\": \"%s\", \"protocol\": \"%s\", \"error\": \"%s\"}\n",
           opt.mode, opt.protocol, text);
    fflush(stdout);
    exit(1);
}

static void parse_args(int argc, char **argv) {
    struct { const char *name; double *number; const char **text; } table[] = {
        {"url", NULL, &opt.url}, {"protocol", NULL, &opt.protocol}, {"mode", NULL, &opt.mode},
        {"dump", NULL, &opt.dump},
        {"pairs", &opt.pairs, NULL}, {"window", &opt.window, NULL},
        {"warmup", &opt.warmup, NULL}, {"duration", &opt.duration, NULL},
        {"rate", &opt.rate, NULL}, {"connections", &opt.connections, NULL},
        {"payload-bytes", &opt.payload_bytes, NULL},
        {"local-addresses", &opt.local_addresses, NULL},
        {"connect-concurrency", &opt.connect_concurrency, NULL},
        {"setup-timeout", &opt.setup_timeout, NULL}, {"hold", &opt.hold, NULL},
    };
    for (int i = 1; i < argc; i += 2) {
        const char *key = argv[i];
        if (strncmp(key, "--", 2) != 0 || i + 1 >= argc) die("bad argument %s", key);
        key += 2;
        size_t k = 0;
        for (; k < sizeof table / sizeof table[0]; k++)
            if (strcmp(table[k].name, key) == 0) break;
        if (k == sizeof table / sizeof table[0]) die("unknown option --%s", key);
        if (table[k].number) {
            char *end;
            *table[k].number = strtod(argv[i + 1], &end);
            if (*end) die("--%s wants a number", key);
        } else {
            *table[k].text = argv[i + 1];
        }
    }
}

/* --- time and buffers ---------------------------------------------------------------- */

static double started_at;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6 - started_at;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

typedef struct { char *data; size_t start, len, cap; } buffer;

static void buf_reserve(buffer *b, size_t more) {
    if (b->start > 0 && b->start + b->len + more > b->cap) {
        memmove(b->data, b->data + b->start, b->len);
        b->start = 0;
    }
    if (b->len + more > b->cap) {
        b->cap = (b->len + more) * 2 + 4096;
        b->data = realloc(b->data, b->cap);
        if (!b->data) die("out of memory");
    }
}

static void buf_consume(buffer *b, size_t n) {
    b->start += n;
    b->len -= n;
    if (b->len == 0) b->start = 0;
}

/* --- servers and dialects ------------------------------------------------------------ */

typedef struct { struct sockaddr_in addr; char host[64]; char path[128]; } server;
static server servers[16];
static int server_count;

static void parse_urls(void) {
    char *copy = strdup(opt.url), *save = NULL;
    for (char *url = strtok_r(copy, ",", &save); url; url = strtok_r(NULL, ",", &save)) {
        if (server_count == 16) die("at most 16 URLs");
        server *s = &servers[server_count++];
        unsigned a, b, c, d, port;
        char path[128] = "/";
        if (sscanf(url, "ws://%u.%u.%u.%u:%u%127s", &a, &b, &c, &d, &port, path) < 5)
            die("URL %s: only ws://IPv4:PORT/ URLs", url);
        s->addr.sin_family = AF_INET;
        s->addr.sin_port = htons(port);
        s->addr.sin_addr.s_addr = htonl(a << 24 | b << 16 | c << 8 | d);
        snprintf(s->host, sizeof s->host, "%u.%u.%u.%u:%u", a, b, c, d, port);
        snprintf(s->path, sizeof s->path, "%s", path);
    }
    if (server_count == 0) die("no URL");
}

/* Pair k's first connection goes to server k mod n and its second to the same one for half
 * the pairs, to the next one for the other half: with two servers, half the pairs are split
 * across them, as random placement by a load balancer splits them. */
static server *server_of(int index) {
    int pair = index >> 1, shift = (index & 1) ? (pair >> 1) & 1 : 0;
    return &servers[(pair + shift) % server_count];
}

enum dialect { HOLEPUNCH, PEERJS, ECHO };
static enum dialect dialect;
static const char *relay_head;
static char *pad;

/* --- connections --------------------------------------------------------------------- */

enum state { IDLE, CONNECTING, UPGRADING, HANDSHAKE, READY, CLOSED };

typedef struct conn {
    int fd, index, outstanding, partner, dirty, want_out;
    enum state state;
    char id[32];
    char *prefix;
    size_t prefix_len;
    buffer in, out;
} conn;

static conn *conns;
static int conn_count, ready_count, failed_count, pending_count;
static int epfd;
static long errors;
static char last_error[256];
static int closing;
static int *dirty_list, dirty_count;

static void note_error(const char *fmt, ...) {
    errors++;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    for (char *p = last_error; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 32) *p = '\'';
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t random32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

static void mark_dirty(conn *c) {
    if (!c->dirty) {
        c->dirty = 1;
        dirty_list[dirty_count++] = c->index;
    }
}

/* A masked client frame (RFC 6455 5.3) with a fresh key, appended to the output buffer. */
static void send_frame(conn *c, int opcode, const char *a, size_t alen, const char *b,
                       size_t blen) {
    size_t len = alen + blen;
    buf_reserve(&c->out, len + 14);
    unsigned char *p = (unsigned char *)c->out.data + c->out.start + c->out.len, *h = p;
    *p++ = 0x80 | opcode;
    if (len < 126) {
        *p++ = 0x80 | len;
    } else if (len < 65536) {
        *p++ = 0x80 | 126;
        *p++ = len >> 8;
        *p++ = len & 0xff;
    } else {
        *p++ = 0x80 | 127;
        for (int i = 7; i >= 0; i--) *p++ = (uint64_t)len >> (8 * i);
    }
    uint32_t key = random32();
    unsigned char mask[4];
    memcpy(mask, &key, 4);
    memcpy(p, mask, 4);
    p += 4;
    memcpy(p, a, alen);
    memcpy(p + alen, b, blen);
    for (size_t i = 0; i < len; i++) p[i] ^= mask[i & 3];
    c->out.len += (p - h) + len;
    mark_dirty(c);
}

static void send_text(conn *c, const char *text) {
    send_frame(c, 1, text, strlen(text), "", 0);
}

/* An offer to the partner, stamped with `t` (ms). */
static void send_offer(conn *c, double t) {
    char tail[48];
    int n = snprintf(tail, sizeof tail, "%.3f}}", t);
    send_frame(c, 1, c->prefix, c->prefix_len, tail, n);
}

static void fail(conn *c, const char *why) {
    if (c->state == CLOSED) return;
    if (c->state != READY) {
        failed_count++;
        pending_count--;
        note_error("connection %s: %s", c->id, why);
    } else if (!closing) {
        note_error("connection %s closed: %s", c->id, why);
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = CLOSED;
}

static void flush(conn *c) {
    c->dirty = 0;
    while (c->out.len > 0 && c->state != CLOSED) {
        ssize_t n = write(c->fd, c->out.data + c->out.start, c->out.len);
        if (n > 0) {
            buf_consume(&c->out, n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            break;
        } else {
            fail(c, strerror(errno));
            return;
        }
    }
    int want = c->out.len > 0;
    if (want != c->want_out && c->state != CLOSED) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.u32 = c->index};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
}

static void flush_dirty(void) {
    for (int i = 0; i < dirty_count; i++) flush(&conns[dirty_list[i]]);
    dirty_count = 0;
}

static void start_connect(conn *c) {
    server *s = server_of(c->index);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in local = {.sin_family = AF_INET};
    local.sin_addr.s_addr = htonl(0x7f000001 + c->index % (int)opt.local_addresses);
    if (bind(c->fd, (struct sockaddr *)&local, sizeof local) < 0)
        die("bind: %s", strerror(errno));
    c->state = CONNECTING;
    pending_count++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = c->index};
    c->want_out = 1;
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    if (connect(c->fd, (struct sockaddr *)&s->addr, sizeof s->addr) < 0 && errno != EINPROGRESS)
        fail(c, strerror(errno));
}

static void upgrade(conn *c) {
    server *s = server_of(c->index);
    char path[256], request[768];
    if (dialect == PEERJS)
        snprintf(path, sizeof path, "%speerjs?key=peerjs&id=%s&token=t%s", s->path, c->id, c->id);
    else
        snprintf(path, sizeof path, "%s", s->path);
    int n = snprintf(request, sizeof request,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, s->host);
    buf_reserve(&c->out, n);
    memcpy(c->out.data + c->out.start + c->out.len, request, n);
    c->out.len += n;
    c->state = UPGRADING;
    mark_dirty(c);
}

static void became_ready(conn *c) {
    c->state = READY;
    ready_count++;
    pending_count--;
}

/* --- measurement hooks --------------------------------------------------------------- */

enum phase { SETUP, FULL_LOAD, DRAIN, PACED, HOLD };
static enum phase phase = SETUP;
static int running, counting;
static long delivered, sent_count, received_count;
static double paced_t0, measure_from;
static double *latencies, *sent_times;
static long latency_count, latency_cap;

static void fill_window(conn *c) {
    while (running && c->outstanding < (int)opt.window && c->state == READY) {
        c->outstanding++;
        sent_count++;
        send_offer(c, now_ms());
    }
}

static void on_delivery(conn *receiver, double sent_at) {
    if (phase == PACED) {
        received_count++;
        if (sent_at - paced_t0 >= measure_from && latency_count < latency_cap) {
            sent_times[latency_count] = sent_at - paced_t0;
            latencies[latency_count++] = now_ms() - sent_at;
        }
        return;
    }
    conn *sender = dialect == ECHO ? receiver : &conns[receiver->partner];
    sender->outstanding--;
    if (counting) delivered++;
    fill_window(sender);
}

static int contains(const char *text, size_t len, const char *needle) {
    return memmem(text, len, needle, strlen(needle)) != NULL;
}

static void on_message(conn *c, char *text, size_t len) {
    if (c->state == READY) {
        size_t head = strlen(relay_head);
        if (len > head && memcmp(text, relay_head, head) == 0) {
            for (size_t i = len; i-- > 4;) {
                if (memcmp(text + i - 4, "\"t\":", 4) == 0) {
                    char number[40];
                    size_t n = len - i < sizeof number - 1 ? len - i : sizeof number - 1;
                    memcpy(number, text + i, n);
                    number[n] = 0;
                    on_delivery(c, strtod(number, NULL));
                    return;
                }
            }
        }
        note_error("unexpected message: %.*s", (int)(len < 150 ? len : 150), text);
        return;
    }
    if (dialect == HOLEPUNCH && contains(text, len, "\"type\":\"welcome\"")) {
        char reg[96];
        snprintf(reg, sizeof reg, "{\"type\":\"register\",\"peerId\":\"%s\",\"id\":1}", c->id);
        send_text(c, reg);
    } else if (dialect == HOLEPUNCH && contains(text, len, "\"type\":\"registered\"")) {
        became_ready(c);
    } else if (dialect == PEERJS && contains(text, len, "\"type\":\"OPEN\"")) {
        became_ready(c);
    } else {
        char why[200];
        snprintf(why, sizeof why, "unexpected %.*s", (int)(len < 150 ? len : 150), text);
        fail(c, why);
    }
}

/* Every whole frame in the input buffer. */
static void on_frames(conn *c) {
    while (c->state != CLOSED) {
        unsigned char *p = (unsigned char *)c->in.data + c->in.start;
        size_t have = c->in.len;
        if (have < 2) return;
        int opcode = p[0] & 0x0f;
        uint64_t len = p[1] & 0x7f;
        size_t header = 2;
        if (p[1] & 0x80) {
            fail(c, "masked frame from the server");
            return;
        }
        if (len == 126) {
            if (have < 4) return;
            len = (uint64_t)p[2] << 8 | p[3];
            header = 4;
        } else if (len == 127) {
            if (have < 10) return;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | p[2 + i];
            header = 10;
        }
        if (have < header + len) return;
        char *payload = (char *)p + header;
        if (opcode == 1 || opcode == 2) {
            on_message(c, payload, len);
        } else if (opcode == 8) {
            fail(c, "close frame");
            return;
        } else if (opcode == 9) {
            send_frame(c, 10, payload, len, "", 0);
        }
        buf_consume(&c->in, header + len);
    }
}

static void on_readable(conn *c) {
    for (;;) {
        buf_reserve(&c->in, 65536);
        ssize_t n = read(c->fd, c->in.data + c->in.start + c->in.len, 65536);
        if (n > 0) {
            c->in.len += n;
        } else if (n == 0) {
            fail(c, "end of stream");
            return;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN) {
            break;
        } else {
            fail(c, strerror(errno));
            return;
        }
        if (n < 65536) break;
    }
    if (c->state == UPGRADING) {
        char *end = memmem(c->in.data + c->in.start, c->in.len, "\r\n\r\n", 4);
        if (!end) return;
        if (c->in.len < 12 || memcmp(c->in.data + c->in.start + 9, "101", 3) != 0) {
            char why[160];
            snprintf(why, sizeof why, "upgrade refused: %.60s", c->in.data + c->in.start);
            fail(c, why);
            return;
        }
        buf_consume(&c->in, end + 4 - (c->in.data + c->in.start));
        if (dialect == ECHO) became_ready(c);
        else c->state = HANDSHAKE;
    }
    on_frames(c);
}

static void on_event(struct epoll_event *ev) {
    conn *c = &conns[ev->data.u32];
    if (c->state == CLOSED) return;
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            fail(c, strerror(err));
            return;
        }
        if (!(ev->events & EPOLLOUT)) return;
        upgrade(c);
        return;
    }
    if (ev->events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
    if (c->state != CLOSED && (ev->events & EPOLLOUT)) mark_dirty(c);
}

/* One pass of the event loop: wait up to `timeout_ms` (fractions allowed), handle, flush. */
static void poll_once(double timeout_ms) {
    struct epoll_event events[512];
    struct timespec ts = {0, 0};
    if (timeout_ms > 0) {
        ts.tv_sec = (time_t)(timeout_ms / 1e3);
        ts.tv_nsec = (long)((timeout_ms - ts.tv_sec * 1e3) * 1e6);
    }
    int n = epoll_pwait2(epfd, events, 512, &ts, NULL);
    for (int i = 0; i < n; i++) on_event(&events[i]);
    flush_dirty();
}

/* Run the loop until `deadline` (ms) or until `done()` holds. */
static void loop_until(double deadline, int (*done)(void)) {
    while ((!done || !done()) && now_ms() < deadline) {
        double left = deadline - now_ms();
        poll_once(left < 50 ? left : 50);
    }
}

/* --- phases -------------------------------------------------------------------------- */

static int opened;

static int setup_done(void) {
    while (opened < conn_count && pending_count < (int)opt.connect_concurrency)
        start_connect(&conns[opened++]);
    return opened == conn_count && pending_count == 0;
}

static double open_all(int count, const char *prefix) {
    conn_count = count;
    conns = calloc(count, sizeof *conns);
    dirty_list = calloc(count, sizeof *dirty_list);
    for (int i = 0; i < count; i++) {
        conns[i].index = i;
        conns[i].fd = -1;
        snprintf(conns[i].id, sizeof conns[i].id, "%s%d", prefix, i);
    }
    double t0 = now_ms();
    loop_until(t0 + opt.setup_timeout * 1e3, setup_done);
    for (int i = 0; i < count; i++)
        if (conns[i].state != READY && conns[i].state != CLOSED && conns[i].state != IDLE)
            fail(&conns[i], "setup timeout");
    failed_count += count - opened;
    return (now_ms() - t0) / 1e3;
}

static int nothing_outstanding(void) {
    for (int i = 0; i < conn_count; i++)
        if (conns[i].outstanding > 0 && conns[i].state == READY) return 0;
    return 1;
}

static int all_received(void) { return received_count >= sent_count; }

static void emit_phase(const char *event, const char *phase) {
    printf("{\"event\": \"%s\", \"phase\": \"%s\"}\n", event, phase);
    fflush(stdout);
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double p) {
    if (latency_count == 0) return NAN;
    long i = (long)(p / 100 * latency_count);
    return latencies[i < latency_count ? i : latency_count - 1];
}

static void json_number(const char *key, double value, const char *sep) {
    if (isnan(value)) printf("\"%s\": null%s", key, sep);
    else printf("\"%s\": %.3f%s", key, value, sep);
}

static int relay_mode(void) {
    double setup = open_all(2 * (int)opt.pairs, "p");
    if (failed_count > 0) {
        printf("{\"event\": \"result\", \"mode\": \"relay\", \"protocol\": \"%s\", \"error\": "
               "\"%d of %d connections failed: %s\", \"errors\": %ld}\n",
               opt.protocol, failed_count, conn_count, last_error, errors);
        return 1;
    }
    for (int i = 0; i < conn_count; i++) {
        conn *c = &conns[i];
        c->partner = i ^ 1;
        char head[256];
        const char *fmt = dialect == PEERJS
            ? "{\"type\":\"OFFER\",\"dst\":\"%s\",\"payload\":{\"type\":\"offer\",\"sdp\":\"%s\",\"t\":"
            : "{\"type\":\"offer\",\"to\":\"%s\",\"offer\":{\"type\":\"offer\",\"sdp\":\"%s\",\"t\":";
        snprintf(head, sizeof head, "%s", conns[c->partner].id);
        c->prefix_len = (size_t)snprintf(NULL, 0, fmt, head, pad);
        c->prefix = malloc(c->prefix_len + 1);
        snprintf(c->prefix, c->prefix_len + 1, fmt, head, pad);
    }

    /* 1. full load */
    phase = FULL_LOAD;
    running = 1;
    for (int i = 0; i < conn_count; i++) fill_window(&conns[i]);
    flush_dirty();
    loop_until(now_ms() + opt.warmup * 1e3, NULL);
    emit_phase("window-start", "full-load");
    double cpu0 = cpu_seconds(), t0 = now_ms();
    delivered = 0;
    counting = 1;
    loop_until(t0 + opt.duration * 1e3, NULL);
    counting = 0;
    double seconds = (now_ms() - t0) / 1e3;
    double full_cpu = (cpu_seconds() - cpu0) / seconds;
    long full_delivered = delivered, full_sent = sent_count;
    emit_phase("window-end", "full-load");
    running = 0;
    phase = DRAIN;
    loop_until(now_ms() + 10e3, nothing_outstanding);
    long lost = 0;
    for (int i = 0; i < conn_count; i++) {
        lost += conns[i].outstanding;
        conns[i].outstanding = 0;
    }

    /* 2. paced */
    double interval = 1e3 / opt.rate;
    long total = (long)ceil((opt.warmup + opt.duration) * opt.rate);
    measure_from = opt.warmup * 1e3;
    latency_cap = total;
    latencies = malloc(sizeof(double) * (total + 1));
    sent_times = malloc(sizeof(double) * (total + 1));
    phase = PACED;
    sent_count = 0;
    emit_phase("paced-start", "paced");
    double pcpu0 = cpu_seconds();
    paced_t0 = now_ms();
    while (sent_count < total) {
        double now = now_ms();
        long due = (long)floor((now - paced_t0) / interval) + 1;
        if (due > total) due = total;
        while (sent_count < due) {
            conn *c = &conns[sent_count % conn_count];
            send_offer(c, paced_t0 + sent_count * interval);
            sent_count++;
        }
        flush_dirty();
        double next = paced_t0 + sent_count * interval;
        poll_once(next - now_ms());
    }
    loop_until(now_ms() + 10e3, all_received);
    double pcpu = (cpu_seconds() - pcpu0) / ((now_ms() - paced_t0) / 1e3);
    if (opt.dump) { /* every measured offer, in arrival order: for looking at the tail */
        FILE *f = fopen(opt.dump, "w");
        if (!f) die("cannot write %s", opt.dump);
        for (long i = 0; i < latency_count; i++)
            fprintf(f, "%.4f %.4f\n", sent_times[i], latencies[i]);
        fclose(f);
    }
    qsort(latencies, latency_count, sizeof(double), compare);

    printf("{\"event\": \"result\", \"mode\": \"relay\", \"protocol\": \"%s\", \"errors\": %ld, "
           "\"lastError\": %s%s%s, \"connections\": %d, \"setupSeconds\": %.3f, ",
           opt.protocol, errors, errors ? "\"" : "", errors ? last_error : "null",
           errors ? "\"" : "", conn_count, setup);
    printf("\"fullLoad\": {\"delivered\": %ld, \"seconds\": %.3f, \"messagesPerSecond\": %.1f, "
           "\"sent\": %ld, \"lost\": %ld, \"generatorCpu\": %.4f}, ",
           full_delivered, seconds, full_delivered / seconds, full_sent, lost, full_cpu);
    printf("\"paced\": {\"rate\": %g, \"sent\": %ld, \"received\": %ld, \"lost\": %ld, "
           "\"measured\": %ld, \"startMs\": %.3f, ",
           opt.rate, sent_count, received_count, sent_count - received_count, latency_count,
           started_at + paced_t0);
    json_number("p50Ms", percentile(50), ", ");
    json_number("p90Ms", percentile(90), ", ");
    json_number("p95Ms", percentile(95), ", ");
    json_number("p99Ms", percentile(99), ", ");
    json_number("p999Ms", percentile(99.9), ", ");
    json_number("maxMs", latency_count ? latencies[latency_count - 1] : NAN, ", ");
    printf("\"generatorCpu\": %.4f}, \"wallSeconds\": %.3f}\n", pcpu, now_ms() / 1e3);
    return 0;
}

static int stdin_line(void) {
    struct pollfd p = {.fd = 0, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0) return 0;
    char chunk[256];
    ssize_t n = read(0, chunk, sizeof chunk);
    return n <= 0 || memchr(chunk, '\n', n) != NULL;
}

static int idle_mode(void) {
    double setup = open_all((int)opt.connections, "idle");
    printf("{\"event\": \"ready\", \"connected\": %d, \"failed\": %d, \"firstFailure\": %s%s%s, "
           "\"setupSeconds\": %.3f}\n",
           ready_count, failed_count, errors ? "\"" : "", errors ? last_error : "null",
           errors ? "\"" : "", setup);
    fflush(stdout);
    phase = HOLD;
    loop_until(now_ms() + opt.hold * 1e3, stdin_line);
    closing = 1;
    printf("{\"event\": \"result\", \"mode\": \"idle\", \"protocol\": \"%s\", \"errors\": %ld, "
           "\"connections\": %d, \"failed\": %d, \"setupSeconds\": %.3f}\n",
           opt.protocol, errors, ready_count, failed_count, setup);
    return 0;
}

int main(int argc, char **argv) {
    started_at = 0;
    started_at = now_ms();
    parse_args(argc, argv);
    if (strcmp(opt.protocol, "holepunch") == 0) dialect = HOLEPUNCH;
    else if (strcmp(opt.protocol, "peerjs") == 0) dialect = PEERJS;
    else if (strcmp(opt.protocol, "echo") == 0) dialect = ECHO;
    else die("unknown protocol %s", opt.protocol);
    relay_head = dialect == PEERJS ? "{\"type\":\"OFFER\"," : "{\"type\":\"offer\",";
    pad = malloc((size_t)opt.payload_bytes + 1);
    memset(pad, 'x', (size_t)opt.payload_bytes);
    pad[(size_t)opt.payload_bytes] = 0;
    parse_urls();
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    rng ^= (uint64_t)getpid() << 32 ^ (uint64_t)(started_at * 1e3);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    int status;
    if (strcmp(opt.mode, "relay") == 0) status = relay_mode();
    else if (strcmp(opt.mode, "idle") == 0) status = idle_mode();
    else die("unknown mode %s", opt.mode);
    fflush(stdout);
    closing = 1;
    return status;
}
