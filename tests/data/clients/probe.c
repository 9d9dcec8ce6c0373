/* getaddrinfo() as an application calls it, timed; built against glibc and musl.
 *
 * Usage: probe NAME. Prints one line: STATUS SECONDS [ADDRESS...], where
 * STATUS is "ok" or the getaddrinfo error (EAI_NONAME -> "nxdomain",
 * EAI_AGAIN -> "again", anything else -> "fail").
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    struct addrinfo hints, *res = NULL, *ai;
    char text[INET6_ADDRSTRLEN];
    double start, took;
    int rc;

    if (argc != 2) {
        fprintf(stderr, "usage: %s NAME\n", argv[0]);
        return 2;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;      /* A and AAAA, as most programs ask */
    hints.ai_socktype = SOCK_STREAM;  /* one entry per address */
    start = now();
    rc = getaddrinfo(argv[1], NULL, &hints, &res);
    took = now() - start;
    if (rc != 0) {
        printf("%s %.3f\n", rc == EAI_NONAME ? "nxdomain" : rc == EAI_AGAIN ? "again" : "fail",
               took);
        return 0;
    }
    printf("ok %.3f", took);
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        const void *addr = ai->ai_family == AF_INET
            ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
            : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        printf(" %s", inet_ntop(ai->ai_family, addr, text, sizeof text));
    }
    printf("\n");
    freeaddrinfo(res);
    return 0;
}
