/* pipe_copy: files copied through pipes with the pipe syscalls no Debian program here uses
 * (coreutils tee(1) copies with read and write; checked with strace). Pipes hold 1 MiB
 * (F_SETPIPE_SZ), IN is moved in pieces of 512 KiB from a page-aligned buffer.
 * pipe_copy -v IN OUT: each piece of IN (read with read(2)) goes into a pipe with vmsplice(2),
 * two iovecs, and from the pipe into OUT with splice(2); then IN goes into the pipe again with
 * write(2) and out of it into memory with vmsplice(2) on the read end, and is compared.
 * pipe_copy -t IN OUT1 OUT2: each piece goes into pipe 1 with write(2), is duplicated into
 * pipe 2 with tee(2), then spliced from pipe 2 into OUT2 and from pipe 1 into OUT1.
 * Both print each pipe's inode ("pipe1 N", "pipe2 N") on stdout.
 * Exit status 0 when every call moved all its bytes. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define PIECE (512 * 1024)
#define PIPE_SIZE (1024 * 1024)

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void expect(ssize_t res, size_t want, const char *what)
{
    if (res < 0 || (size_t)res != want) {
        fprintf(stderr, "%s: %zd of %zu bytes\n", what, res, want);
        exit(1);
    }
}

static void new_pipe(int p[2], const char *name)
{
    struct stat st;
    if (pipe(p) || fstat(p[0], &st) || fcntl(p[1], F_SETPIPE_SZ, PIPE_SIZE) < 0)
        die("pipe");
    printf("%s %llu\n", name, (unsigned long long)st.st_ino);
}

/* The whole of `path`, read with read(2); its size in *n. */
static char *slurp(const char *path, size_t *n)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st))
        die(path);
    void *data = NULL;
    if (posix_memalign(&data, 4096, st.st_size ? st.st_size : 1) ||
        read(fd, data, st.st_size) != st.st_size)
        die("read");
    close(fd);
    *n = st.st_size;
    return data;
}

static int create(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die(path);
    return fd;
}

static int by_vmsplice(const char *in, const char *out)
{
    size_t n;
    char *data = slurp(in, &n);
    int p[2], fd = create(out);
    new_pipe(p, "pipe1");
    for (size_t at = 0; at < n; at += PIECE) {
        size_t len = n - at < PIECE ? n - at : PIECE;
        struct iovec iov[2] = {{data + at, len / 2}, {data + at + len / 2, len - len / 2}};
        expect(vmsplice(p[1], iov, 2, 0), len, "vmsplice");
        expect(splice(p[0], NULL, fd, NULL, len, 0), len, "splice");
    }
    char *back = malloc(n ? n : 1);
    if (!back)
        die("malloc");
    for (size_t at = 0; at < n; at += PIECE) {
        size_t len = n - at < PIECE ? n - at : PIECE;
        expect(write(p[1], data + at, len), len, "write");
        for (size_t got = 0; got < len;) {
            struct iovec iov = {back + at + got, len - got};
            ssize_t r = vmsplice(p[0], &iov, 1, 0);
            if (r <= 0)
                die("vmsplice out");
            got += r;
        }
    }
    if (memcmp(back, data, n)) {
        fprintf(stderr, "vmspliced bytes differ\n");
        return 1;
    }
    return 0;
}

static int by_tee(const char *in, const char *out1, const char *out2)
{
    size_t n;
    char *data = slurp(in, &n);
    int p1[2], p2[2], fd1 = create(out1), fd2 = create(out2);
    new_pipe(p1, "pipe1");
    new_pipe(p2, "pipe2");
    for (size_t at = 0; at < n; at += PIECE) {
        size_t len = n - at < PIECE ? n - at : PIECE;
        expect(write(p1[1], data + at, len), len, "write");
        expect(tee(p1[0], p2[1], len, 0), len, "tee");
        expect(splice(p2[0], NULL, fd2, NULL, len, 0), len, "splice pipe 2");
        expect(splice(p1[0], NULL, fd1, NULL, len, 0), len, "splice pipe 1");
    }
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 4 && !strcmp(argv[1], "-v"))
        return by_vmsplice(argv[2], argv[3]);
    if (argc == 5 && !strcmp(argv[1], "-t"))
        return by_tee(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: pipe_copy -v IN OUT | pipe_copy -t IN OUT1 OUT2\n");
    return 2;
}
