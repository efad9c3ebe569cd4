/* canary: when did this CPU run nothing of ours?
 *
 *   canary CPU PERIOD_US THRESHOLD_US OUT
 *
 * Pinned to CPU at real-time priority (SCHED_FIFO), it sleeps until every PERIOD_US
 * microseconds on CLOCK_MONOTONIC and writes to OUT each wake that came more than
 * THRESHOLD_US late, as "WOKEN_MS LATE_MS" (CLOCK_MONOTONIC, ms). A real-time task preempts
 * every ordinary one the moment its timer fires, so a late wake means the CPU ran nothing
 * of this VM's for that long: the hypervisor ran something else (steal, also below the
 * 10 ms ticks /proc/stat counts it in), or the kernel ran with preemption off. The
 * signaling benchmark (signaling_load.py) runs one on each CPU during its paced phases
 * and leaves the offers in flight then out of its "steady" p99, as it does for steal.
 *
 * Prints "ready" on stdout once at real-time priority, or an error and exits 3 when it
 * cannot get it (not root); it runs until SIGTERM, writing OUT ("-": stdout, after
 * "ready") line by line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t stop;

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

static double ms(const struct timespec *ts) { return ts->tv_sec * 1e3 + ts->tv_nsec / 1e6; }

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: canary CPU PERIOD_US THRESHOLD_US OUT\n");
        return 2;
    }
    int cpu = atoi(argv[1]);
    long period_ns = atol(argv[2]) * 1000L;
    double threshold_ms = atof(argv[3]) / 1e3;
    FILE *out = strcmp(argv[4], "-") == 0 ? stdout : fopen(argv[4], "w");
    if (!out || period_ns <= 0) {
        fprintf(stderr, "canary: cannot write %s or bad period\n", argv[4]);
        return 2;
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    struct sched_param param = {.sched_priority = 10};
    if (sched_setaffinity(0, sizeof set, &set) != 0 ||
        sched_setscheduler(0, SCHED_FIFO, &param) != 0) {
        printf("{\"event\": \"error\", \"error\": \"%s\"}\n", strerror(errno));
        return 3;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    struct timespec next, now;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!stop) {
        next.tv_nsec += period_ns;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        if (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) != 0) continue;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double late = ms(&now) - ms(&next);
        if (late > threshold_ms) {
            fprintf(out, "%.3f %.3f\n", ms(&now), late);
            fflush(out);
            next = now; /* the wakes missed meanwhile are not owed */
        }
    }
    fclose(out);
    return 0;
}
