/* Preloaded into s3s-fs (LD_PRELOAD) by the tests (tests/common/s3.rs) and the benchmarks
 * (bench/run.py): sets TCP_NODELAY on every connection s3s-fs accepts, and does nothing else.
 *
 * s3s-fs 0.14.1 does not set it. hyper writes an answer's headers, then its body; a body shorter
 * than a TCP segment then waits (Nagle) for the ACK of the headers, which the client's kernel
 * delays by up to 40 ms. Every small answer took 40 ms more than any real S3 service takes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int s = real(fd, addr, len, flags);
    if (s >= 0) { int one = 1; setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); }
    return s;
}
int accept(int fd, struct sockaddr *addr, socklen_t *len) { return accept4(fd, addr, len, 0); }
