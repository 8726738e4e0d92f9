/* Refused connects to 127.0.0.1:PORT for SECONDS, as fast as one core can make them;
 * prints how many. Used by run_capture.py when a C compiler is there.
 *   storm SECONDS [PORT] */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10.0;
    int port = argc > 2 ? atoi(argv[2]) : 7999;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    double end = now() + seconds;
    long n = 0;
    while ((n & 255) || now() < end) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0) { perror("socket"); return 1; }
        connect(s, (struct sockaddr *)&to, sizeof to);
        close(s);
        n++;
    }
    printf("%ld\n", n);
    return 0;
}
