/*
 * Forwarder experiment behind BENCHMARKS.md's relay throughput notes:
 * how fast can anything forward loopback TCP on this machine, as a ratio
 * to direct loopback TCP measured in the same run? Blocking threads, no
 * tokio, 512 MiB per run, 256 KiB writes framed as the relay frames them
 * (a 5-byte DATA header before each 256 KiB payload).
 *
 *   direct   sender -> receiver
 *   copy     sender -> read()/write() forwarder, 1 MiB buffer -> receiver
 *   splice   sender -> splice() through a 1 MiB pipe -> receiver
 *   sockmap  sender -> kernel forwarding: a BPF sockmap with a strparser
 *            (parser: the frame length from the DATA header; verdict:
 *            redirect to the peer socket's egress), no user-space copy.
 *   verdict  the same without a strparser: a BPF_SK_SKB_VERDICT program
 *            redirects every skb as it arrives (kernel 5.13 and later).
 *            Both BPF forwarders need root (CAP_BPF). The programs are
 *            hand-assembled, as there is no clang here.
 *
 * Build and run:  gcc -O2 -o /tmp/forwarders scripts/forwarders.c -lpthread && /tmp/forwarders
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TOTAL (512L << 20)
#define CHUNK (256 * 1024)
#define FRAMES (TOTAL / CHUNK)

static long bpf(int cmd, union bpf_attr *a) { return syscall(SYS_bpf, cmd, a, sizeof(*a)); }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void write_all(int fd, const char *b, long n) {
    while (n > 0) {
        long k = write(fd, b, n);
        if (k <= 0) die("write");
        b += k;
        n -= k;
    }
}

struct end { int fd; int framed; long got; };

static void *sender(void *p) {
    struct end *e = p;
    char *b = malloc(CHUNK + 5);
    memset(b, 0x5a, CHUNK + 5);
    unsigned len = htonl(CHUNK);
    b[0] = (char)0x80; /* DATA */
    memcpy(b + 1, &len, 4);
    for (long i = 0; i < FRAMES; i++) {
        if (e->framed) write_all(e->fd, b, CHUNK + 5);
        else write_all(e->fd, b + 5, CHUNK);
    }
    shutdown(e->fd, SHUT_WR);
    free(b);
    return 0;
}

static void *receiver(void *p) {
    struct end *e = p;
    char *b = malloc(CHUNK);
    long want = TOTAL + (e->framed ? FRAMES * 5 : 0);
    while (e->got < want) {
        long k = read(e->fd, b, CHUNK);
        if (k <= 0) break;
        e->got += k;
    }
    free(b);
    return 0;
}

/* A connected loopback pair: *c the connecting side, *s the accepted one. */
static void pair(int *c, int *s) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t n = sizeof a;
    if (bind(l, (void *)&a, sizeof a) || listen(l, 1) || getsockname(l, (void *)&a, &n)) die("listen");
    *c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(*c, (void *)&a, sizeof a)) die("connect");
    *s = accept(l, 0, 0);
    close(l);
    int one = 1;
    setsockopt(*c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

struct fwd { int from, to; };

static void *copy_forwarder(void *p) {
    struct fwd *f = p;
    char *b = malloc(1 << 20);
    long k;
    while ((k = read(f->from, b, 1 << 20)) > 0) write_all(f->to, b, k);
    shutdown(f->to, SHUT_WR);
    free(b);
    return 0;
}

static void *splice_forwarder(void *p) {
    struct fwd *f = p;
    int pp[2];
    if (pipe(pp)) die("pipe");
    fcntl(pp[0], F_SETPIPE_SZ, 1 << 20);
    long k;
    while ((k = splice(f->from, 0, pp[1], 0, 1 << 20, SPLICE_F_MOVE)) > 0) {
        while (k > 0) {
            long x = splice(pp[0], 0, f->to, 0, k, SPLICE_F_MOVE | SPLICE_F_MORE);
            if (x <= 0) die("splice out");
            k -= x;
        }
    }
    shutdown(f->to, SHUT_WR);
    close(pp[0]);
    close(pp[1]);
    return 0;
}

static int sockmap = -1;

static int load(struct bpf_insn *ins, int n, int attach) {
    static char log[65536];
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_SK_SKB;
    a.insn_cnt = n;
    a.insns = (long)ins;
    a.license = (long)"GPL";
    a.log_level = 1;
    a.log_size = sizeof log;
    a.log_buf = (long)log;
    a.expected_attach_type = attach;
    int fd = bpf(BPF_PROG_LOAD, &a);
    if (fd < 0) {
        fputs(log, stderr);
        die("BPF_PROG_LOAD");
    }
    return fd;
}

#define INSN(c, d, s, o, i) {c, d, s, o, i}

/* A two-slot sockmap: slot 0 the relay's socket from the sender, slot 1
 * its socket to the receiver. -1 without CAP_BPF. */
static int new_sockmap(void) {
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_type = BPF_MAP_TYPE_SOCKMAP;
    a.key_size = 4;
    a.value_size = 4;
    a.max_entries = 2;
    return bpf(BPF_MAP_CREATE, &a);
}

static void attach(int map, int prog, int type) {
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.target_fd = map;
    a.attach_bpf_fd = prog;
    a.attach_type = type;
    if (bpf(BPF_PROG_ATTACH, &a)) die("attach");
}

/* The verdict program: every frame (or skb) to slot 1's egress. */
#define REDIRECT_TO_SLOT_1(map)                                        \
    {                                                                  \
        INSN(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, map), \
        INSN(0, 0, 0, 0, 0),                                           \
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, 1),                 \
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),                 \
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_map),   \
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),                          \
    }

static int sockmap_setup(void) {
    int map = new_sockmap();
    if (map < 0) return -1;
    /* Parser: frame length = 5 + the big-endian u32 after the type byte. */
    struct bpf_insn parser[] = {
        INSN(BPF_ST | BPF_MEM | BPF_DW, 10, 0, -8, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 2, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 3, 10, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, 3, 0, 0, -8),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 5),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_skb_load_bytes),
        INSN(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 2, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0), /* need more bytes */
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
        INSN(BPF_LDX | BPF_MEM | BPF_DW, 0, 10, -8, 0),
        INSN(BPF_ALU64 | BPF_RSH | BPF_K, 0, 0, 0, 8),
        INSN(BPF_ALU | BPF_END | BPF_TO_BE, 0, 0, 0, 32),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, 0, 0, 0, 5),
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    struct bpf_insn verdict[] = REDIRECT_TO_SLOT_1(map);
    int p = load(parser, sizeof parser / sizeof parser[0], BPF_SK_SKB_STREAM_PARSER);
    int v = load(verdict, sizeof verdict / sizeof verdict[0], BPF_SK_SKB_STREAM_VERDICT);
    attach(map, p, BPF_SK_SKB_STREAM_PARSER);
    attach(map, v, BPF_SK_SKB_STREAM_VERDICT);
    return map;
}

/* Sockmap for the verdict-only forwarder: slots as above, no parser. */
static int verdictmap = -1;
static int verdict_setup(void) {
    int map = new_sockmap();
    if (map < 0) return -1;
    struct bpf_insn verdict[] = REDIRECT_TO_SLOT_1(map);
    attach(map, load(verdict, sizeof verdict / sizeof verdict[0], BPF_SK_SKB_VERDICT),
           BPF_SK_SKB_VERDICT);
    return map;
}
enum kind { DIRECT, COPY, SPLICE, SOCKMAP, VERDICT };

/* MiB/s for one run of `k`. */
static double run(enum kind k) {
    int ca, ra, cb, rb;
    pair(&ca, &ra);
    struct end snd = {.fd = ca, .framed = k != DIRECT}, rcv = {.framed = k != DIRECT};
    struct fwd f;
    pthread_t ts, tr, tf;
    int forwarder = 0;
    if (k == DIRECT) {
        rcv.fd = ra;
    } else {
        pair(&cb, &rb);
        rcv.fd = cb;
        f.from = ra;
        f.to = rb;
        if (k == SOCKMAP || k == VERDICT) {
            int big = 4 << 20; /* strparser needs a frame to fit sk_rcvbuf */
            setsockopt(ra, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
            int fds[2] = {ra, rb};
            for (int i = 0; i < 2; i++) {
                union bpf_attr a;
                memset(&a, 0, sizeof a);
                a.map_fd = k == SOCKMAP ? sockmap : verdictmap;
                a.key = (long)&i;
                a.value = (long)&fds[i];
                a.flags = BPF_ANY;
                if (bpf(BPF_MAP_UPDATE_ELEM, &a)) die("sockmap update");
            }
        } else {
            forwarder = 1;
        }
    }
    double t = now();
    if (forwarder) pthread_create(&tf, 0, k == COPY ? copy_forwarder : splice_forwarder, &f);
    pthread_create(&ts, 0, sender, &snd);
    pthread_create(&tr, 0, receiver, &rcv);
    pthread_join(ts, 0);
    pthread_join(tr, 0);
    if (forwarder) pthread_join(tf, 0);
    double secs = now() - t;
    long want = TOTAL + (rcv.framed ? FRAMES * 5 : 0);
    if (rcv.got != want) {
        fprintf(stderr, "run %d: received %ld of %ld bytes\n", k, rcv.got, want);
        exit(1);
    }
    close(ca);
    close(ra);
    if (k != DIRECT) {
        close(cb);
        close(rb);
    }
    return TOTAL / 1048576.0 / secs;
}

int main(void) {
    sockmap = sockmap_setup();
    verdictmap = verdict_setup();
    if (sockmap < 0) fprintf(stderr, "no sockmap (not root?): skipping that forwarder\n");
    for (int r = 0; r < 8; r++) {
        double d = run(DIRECT), c = run(COPY), s = run(SPLICE);
        printf("direct %5.0f MiB/s | copy %5.0f (%.2f) | splice %5.0f (%.2f)", d, c, c / d, s, s / d);
        if (sockmap >= 0) {
            double m = run(SOCKMAP);
            printf(" | sockmap %5.0f (%.2f)", m, m / d);
            double v = run(VERDICT);
            printf(" | verdict %5.0f (%.2f)", v, v / d);
        }
        printf("\n");
        fflush(stdout);
    }
    return 0;
}
