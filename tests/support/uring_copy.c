/* uring_copy IN OUT: copy IN to OUT through io_uring, with no liburing (raw syscalls), the
 * way a database or runtime writes: the first third with IORING_OP_WRITE, the second with
 * IORING_OP_WRITEV (two iovecs), the rest with IORING_OP_WRITE_FIXED from a registered buffer;
 * then OUT is read back whole with IORING_OP_READ and compared. IN is read with read(2).
 * uring_copy -s IN: send IN through a unix stream socket pair in 64 KiB pieces, alternately
 * with IORING_OP_SEND and IORING_OP_SENDMSG, and receive each piece on the other end with
 * IORING_OP_RECV and IORING_OP_RECVMSG in turn; compared with IN.
 * uring_copy -p IN OUT1 OUT2: IN (at most 1 MiB) goes into pipe 1 with IORING_OP_SPLICE (from
 * offset 0), is duplicated into pipe 2 with IORING_OP_TEE, then spliced from pipe 2 into OUT2
 * (at the file position) and from pipe 1 into OUT1 (at offset 0), each with IORING_OP_SPLICE.
 * Exit status 0 when every request moved all its bytes and the read-back matched. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

static int ring_fd;
static struct io_uring_params p;
static unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
static struct io_uring_sqe *sqes;
static struct io_uring_cqe *cqes;

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void setup(void)
{
    ring_fd = syscall(__NR_io_uring_setup, 4, &p);
    if (ring_fd < 0)
        die("io_uring_setup");
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(0, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
                    IORING_OFF_SQ_RING);
    char *cq = mmap(0, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
                    IORING_OFF_CQ_RING);
    sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
        die("mmap");
    sq_tail = (unsigned *)(sq + p.sq_off.tail);
    sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    sq_array = (unsigned *)(sq + p.sq_off.array);
    cq_head = (unsigned *)(cq + p.cq_off.head);
    cq_tail = (unsigned *)(cq + p.cq_off.tail);
    cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

/* The next submission queue entry, zeroed. */
static struct io_uring_sqe *next_sqe(void)
{
    unsigned idx = *sq_tail & *sq_mask;
    memset(&sqes[idx], 0, sizeof(sqes[idx]));
    sq_array[idx] = idx;
    return &sqes[idx];
}

/* Submit the entry next_sqe gave and wait for its completion; its result. */
static int submit(void)
{
    unsigned tail = *sq_tail;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, ring_fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
        die("io_uring_enter");
    unsigned head = *cq_head;
    if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE)) {
        fprintf(stderr, "no completion\n");
        exit(2);
    }
    int res = cqes[head & *cq_mask].res;
    __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
    return res;
}

/* One request with a buffer; its result. */
static int run(int opcode, int fd, void *addr, unsigned len, uint64_t off, int buf_index)
{
    struct io_uring_sqe *sqe = next_sqe();
    sqe->opcode = opcode;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = len;
    sqe->off = off;
    sqe->buf_index = buf_index;
    return submit();
}

/* IORING_OP_SPLICE or IORING_OP_TEE of len bytes (SPLICE: -1 for the file position or a
 * pipe; TEE takes 0). */
static int run_splice(int opcode, int in, int64_t off_in, int out, int64_t off_out, unsigned len)
{
    struct io_uring_sqe *sqe = next_sqe();
    sqe->opcode = opcode;
    sqe->splice_fd_in = in;
    sqe->splice_off_in = (uint64_t)off_in;
    sqe->fd = out;
    sqe->off = (uint64_t)off_out;
    sqe->len = len;
    return submit();
}

static void expect(int res, size_t want, const char *what)
{
    if (res < 0 || (size_t)res != want) {
        fprintf(stderr, "%s: %d of %zu bytes\n", what, res, want);
        exit(1);
    }
}

#define PIECE (64 * 1024)

/* `data` (n bytes) through a socket pair: each piece sent whole, then received in turns. */
static int through_socket(const char *data, size_t n)
{
    int sv[2];
    char *back = malloc(n ? n : 1);
    if (!back || socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
        die("socketpair");
    unsigned turn = 0;
    for (size_t at = 0; at < n; at += PIECE) {
        size_t len = n - at < PIECE ? n - at : PIECE;
        struct iovec out = {(void *)(data + at), len};
        struct msghdr sent = {.msg_iov = &out, .msg_iovlen = 1};
        if (at / PIECE % 2)
            expect(run(IORING_OP_SENDMSG, sv[0], &sent, 1, 0, 0), len, "sendmsg");
        else
            expect(run(IORING_OP_SEND, sv[0], (void *)(data + at), len, 0, 0), len, "send");
        for (size_t got = 0; got < len; turn++) {
            struct iovec in = {back + at + got, len - got};
            struct msghdr recvd = {.msg_iov = &in, .msg_iovlen = 1};
            int res = turn % 2 ? run(IORING_OP_RECVMSG, sv[1], &recvd, 1, 0, 0)
                               : run(IORING_OP_RECV, sv[1], back + at + got, len - got, 0, 0);
            if (res <= 0)
                die("recv");
            got += res;
        }
    }
    if (memcmp(back, data, n)) {
        fprintf(stderr, "received bytes differ\n");
        return 1;
    }
    return 0;
}

/* IN -> pipe 1 -> (tee) pipe 2 -> OUT2, pipe 1 -> OUT1, all through io_uring. */
static int through_pipes(const char *in_path, const char *out1_path, const char *out2_path)
{
    int in = open(in_path, O_RDONLY), p1[2], p2[2];
    int out1 = open(out1_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int out2 = open(out2_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    struct stat st;
    if (in < 0 || out1 < 0 || out2 < 0 || fstat(in, &st) || pipe(p1) || pipe(p2))
        die("open");
    if (fcntl(p1[1], F_SETPIPE_SZ, 1 << 20) < 0 || fcntl(p2[1], F_SETPIPE_SZ, 1 << 20) < 0)
        die("F_SETPIPE_SZ");
    size_t n = st.st_size;
    expect(run_splice(IORING_OP_SPLICE, in, 0, p1[1], -1, n), n, "splice in");
    expect(run_splice(IORING_OP_TEE, p1[0], 0, p2[1], 0, n), n, "tee"); /* no offsets */
    expect(run_splice(IORING_OP_SPLICE, p2[0], -1, out2, -1, n), n, "splice out2");
    expect(run_splice(IORING_OP_SPLICE, p1[0], -1, out1, 0, n), n, "splice out1");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "-p")) {
        setup();
        return through_pipes(argv[2], argv[3], argv[4]);
    }
    if (argc == 3 && !strcmp(argv[1], "-s")) {
        int in = open(argv[2], O_RDONLY);
        struct stat st;
        if (in < 0 || fstat(in, &st))
            die(argv[2]);
        char *data = malloc(st.st_size ? st.st_size : 1);
        if (!data || read(in, data, st.st_size) != st.st_size)
            die("read");
        setup();
        return through_socket(data, st.st_size);
    }
    if (argc != 3) {
        fprintf(stderr, "usage: uring_copy IN OUT | uring_copy -s IN | uring_copy -p IN OUT1 OUT2\n");
        return 2;
    }
    int in = open(argv[1], O_RDONLY);
    struct stat st;
    if (in < 0 || fstat(in, &st))
        die(argv[1]);
    size_t n = st.st_size, third = n / 3;
    char *data = malloc(n), *back = malloc(n);
    if (!data || !back || read(in, data, n) != (ssize_t)n)
        die("read");
    int out = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (out < 0)
        die(argv[2]);
    setup();

    expect(run(IORING_OP_WRITE, out, data, third, 0, 0), third, "write");

    size_t half = third / 2;
    struct iovec iov[2] = {
        {data + third, half}, {data + third + half, third - half},
    };
    expect(run(IORING_OP_WRITEV, out, iov, 2, third, 0), third, "writev");

    size_t rest = n - 2 * third;
    char *fixed = malloc(rest ? rest : 1);
    memcpy(fixed, data + 2 * third, rest);
    struct iovec reg = {fixed, rest ? rest : 1};
    if (syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_BUFFERS, &reg, 1) < 0)
        die("io_uring_register");
    expect(run(IORING_OP_WRITE_FIXED, out, fixed, rest, 2 * third, 0), rest, "write_fixed");

    expect(run(IORING_OP_READ, out, back, n, 0, 0), n, "read");
    if (memcmp(back, data, n)) {
        fprintf(stderr, "read back differs\n");
        return 1;
    }
    return 0;
}
