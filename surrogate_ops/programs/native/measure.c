// Basic blocks' throughput on the machine at hand, in user space, measured as BHive measures it.
//
// Each block (machine code, hex) is unrolled UNROLL_LO and UNROLL_HI times between a prologue and an
// epilogue written here; every general register, the stack pointer included, points at REG_VALUE, and a
// page the block touches is mapped on first touch (all of them onto one physical page whose every
// 8 bytes hold REG_VALUE, so that pointer chains stay in mapped memory), up to MAX_PAGES a block. Each
// unrolling runs once to map its pages and warm up, then REPEATS times; the minimum time-stamp-counter
// ticks of each are kept, and the block's ticks per iteration are their difference over the difference
// of the unrollings (the prologue, the epilogue and the call cancel). A block that faults (a page that
// cannot be mapped, a division error, an illegal instruction) or runs past the timer is reported with
// the reason and the next one goes on.
//
//   measure CPU UNROLL_LO UNROLL_HI REPEATS < hexes (one a line) > answers (one a line)
//   answer: "ok TICKS_PER_ITERATION" or "error REASON"
//
// TSC ticks are not core cycles: the caller calibrates them against dependency chains of known latency
// (`programs/measure.py`). Built with gcc on first use.
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>
#include <x86intrin.h>

#define REG_VALUE 0x12345600UL      // what every general register holds when a block starts
#define CODE_BASE 0x5e0000000000UL  // the generated code, far from the harness (RIP-relative operands)
#define MAX_PAGES 256               // pages one block may have mapped on first touch
#define MAX_BLOCK 4096              // bytes of one block's machine code
#define PAGE 4096UL

static sigjmp_buf escape;
static volatile sig_atomic_t caught;
static volatile uintptr_t caught_address;
static uint64_t saved_rsp;  // where the epilogue finds the harness's stack again
static int shared_page;     // the one physical page behind every page a block touches
static uintptr_t mapped[MAX_PAGES];
static int n_mapped;
static uint8_t *code;
static size_t code_size;
static int has_avx;

static void on_signal(int signal, siginfo_t *info, void *context) {
    (void)context;
    caught = signal;
    caught_address = (uintptr_t)info->si_addr;
    siglongjmp(escape, 1);
}

static size_t put(size_t at, const void *bytes, size_t n) {
    memcpy(code + at, bytes, n);
    return at + n;
}

static size_t put_movabs(size_t at, int reg, uint64_t value) {  // movabs $value, %reg (0-15)
    uint8_t op[10] = {(uint8_t)(reg < 8 ? 0x48 : 0x49), (uint8_t)(0xb8 + (reg & 7))};
    memcpy(op + 2, &value, 8);
    return put(at, op, 10);
}

// prologue | block x unroll | epilogue, in the code buffer; its length, or 0 when it does not fit
static size_t generate(const uint8_t *block, size_t length, int unroll) {
    static const uint8_t save[] = {0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57};  // push rbx..r15
    static const uint8_t store_rsp[] = {0x48, 0x89, 0x20};                                         // mov %rsp, (%rax)
    static const uint8_t load_rsp[] = {0x48, 0x8b, 0x20};                                          // mov (%rax), %rsp
    static const uint8_t restore[] = {0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, 0x5d, 0x5b};  // pop r15..rbx
    static const uint8_t fninit[] = {0xdb, 0xe3}, cld[] = {0xfc}, ret[] = {0xc3};
    static const uint8_t vzeroall[] = {0xc5, 0xfc, 0x77}, vzeroupper[] = {0xc5, 0xf8, 0x77};
    size_t need = 256 + length * (size_t)unroll;
    if (need > code_size) return 0;
    size_t at = put(0, save, sizeof save);
    at = put_movabs(at, 0, (uint64_t)&saved_rsp);
    at = put(at, store_rsp, sizeof store_rsp);
    at = put(at, fninit, sizeof fninit);
    if (has_avx) at = put(at, vzeroall, sizeof vzeroall);
    for (int reg = 0; reg < 16; reg++) at = put_movabs(at, reg, REG_VALUE);  // rsp (4) too
    for (int k = 0; k < unroll; k++) at = put(at, block, length);
    at = put_movabs(at, 0, (uint64_t)&saved_rsp);
    at = put(at, load_rsp, sizeof load_rsp);
    at = put(at, restore, sizeof restore);
    at = put(at, fninit, sizeof fninit);
    at = put(at, cld, sizeof cld);
    if (has_avx) at = put(at, vzeroupper, sizeof vzeroupper);
    return put(at, ret, sizeof ret);
}

static void unmap_touched(void) {
    for (int k = 0; k < n_mapped; k++) munmap((void *)mapped[k], PAGE);
    n_mapped = 0;
}

// map the page at `address` onto the shared page; 0 when it cannot be (a limit, or already mapped)
static int map_touched(uintptr_t address) {
    uintptr_t page = address & ~(PAGE - 1);
    if (n_mapped >= MAX_PAGES || page < 0x10000 || page >= 0x7fffffffe000UL) return 0;
    if (page >= CODE_BASE && page < CODE_BASE + code_size) return 0;
    void *got = mmap((void *)page, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE, shared_page, 0);
    if (got == MAP_FAILED) return 0;
    mapped[n_mapped++] = page;
    return 1;
}

static inline uint64_t tsc_start(void) {
    unsigned lo, hi;
    __asm__ volatile("lfence\n\trdtsc\n\tlfence" : "=a"(lo), "=d"(hi)::"memory");
    return ((uint64_t)hi << 32) | lo;
}

static inline uint64_t tsc_stop(void) {
    unsigned lo, hi, aux;
    __asm__ volatile("rdtscp\n\tlfence" : "=a"(lo), "=d"(hi), "=c"(aux)::"memory");
    return ((uint64_t)hi << 32) | lo;
}

// one run of the generated code: its ticks, or a signal (its address in `caught_address`)
static int run(uint64_t *ticks) {
    volatile uint64_t t0 = 0, t1 = 0;
    unsigned int mxcsr = _mm_getcsr();
    struct itimerval timer = {{0, 0}, {0, 200000}}, off = {{0, 0}, {0, 0}};
    caught = 0;
    if (sigsetjmp(escape, 1) == 0) {
        _mm_setcsr(0x9fc0);  // all exceptions masked, flush-to-zero and denormals-are-zero: no microcode assists
        setitimer(ITIMER_REAL, &timer, NULL);
        t0 = tsc_start();
        ((void (*)(void))code)();
        t1 = tsc_stop();
    }
    setitimer(ITIMER_REAL, &off, NULL);
    _mm_setcsr(mxcsr);
    *ticks = t1 - t0;
    return caught;
}

static const char *reason(int signal) {
    switch (signal) {
        case SIGSEGV: return "segmentation fault";
        case SIGBUS: return "bus error";
        case SIGFPE: return "arithmetic error (a division by zero or overflow)";
        case SIGILL: return "illegal instruction on this CPU";
        case SIGTRAP: return "trap";
        case SIGALRM: return "ran past the 0.2 s timer";
        default: return "signal";
    }
}

// the fewest ticks over `repeats` runs of `unroll` copies, after a run that maps the pages; 0 on a fault
static int fewest(const uint8_t *block, size_t length, int unroll, int repeats, uint64_t *best, char *why) {
    if (!generate(block, length, unroll)) {
        snprintf(why, 200, "block of %zu bytes too long for the code buffer", length);
        return 0;
    }
    uint64_t ticks;
    for (;;) {  // the warm-up run maps every page the block touches
        int signal = run(&ticks);
        if (!signal) break;
        if ((signal == SIGSEGV || signal == SIGBUS) && map_touched(caught_address)) continue;
        if (signal == SIGSEGV)
            snprintf(why, 200, "%s at 0x%lx (unmappable, or over %d pages)", reason(signal),
                     (unsigned long)caught_address, MAX_PAGES);
        else
            snprintf(why, 200, "%s", reason(signal));
        return 0;
    }
    *best = UINT64_MAX;
    for (int k = 0; k < repeats; k++) {
        int signal = run(&ticks);
        if (signal) {
            snprintf(why, 200, "%s on a repeat", reason(signal));
            return 0;
        }
        if (ticks < *best) *best = ticks;
    }
    return 1;
}

static int parse_hex(const char *text, uint8_t *out, size_t *length) {
    size_t n = strlen(text);
    while (n && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' ')) n--;
    if (n == 0 || n % 2 || n / 2 > MAX_BLOCK) return 0;
    for (size_t k = 0; k < n / 2; k++) {
        unsigned int byte;
        if (sscanf(text + 2 * k, "%2x", &byte) != 1) return 0;
        out[k] = (uint8_t)byte;
    }
    *length = n / 2;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: measure CPU UNROLL_LO UNROLL_HI REPEATS < hexes\n");
        return 2;
    }
    int cpu = atoi(argv[1]), lo = atoi(argv[2]), hi = atoi(argv[3]), repeats = atoi(argv[4]);
    if (lo < 1 || hi <= lo || repeats < 1) {
        fprintf(stderr, "measure: need 1 <= UNROLL_LO < UNROLL_HI and REPEATS >= 1\n");
        return 2;
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set)) perror("measure: sched_setaffinity");
    }
    __builtin_cpu_init();
    has_avx = __builtin_cpu_supports("avx");
    shared_page = memfd_create("measure-page", 0);
    if (shared_page < 0 || ftruncate(shared_page, PAGE)) {
        perror("measure: memfd");
        return 1;
    }
    uint64_t *words = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, shared_page, 0);
    for (size_t k = 0; k < PAGE / 8; k++) words[k] = REG_VALUE;  // pointer chains stay on mapped pages
    code_size = 256 + (size_t)MAX_BLOCK * hi;
    code_size = (code_size + PAGE - 1) & ~(PAGE - 1);
    code = mmap((void *)CODE_BASE, code_size, PROT_READ | PROT_WRITE | PROT_EXEC,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (code == MAP_FAILED) {
        perror("measure: code buffer");
        return 1;
    }
    static uint8_t signal_stack[1 << 16];
    stack_t alternate = {.ss_sp = signal_stack, .ss_size = sizeof signal_stack, .ss_flags = 0};
    sigaltstack(&alternate, NULL);  // a block may leave %rsp anywhere: handlers run on their own stack
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_signal;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    int signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGALRM};
    for (size_t k = 0; k < sizeof signals / sizeof signals[0]; k++) sigaction(signals[k], &action, NULL);

    static char line[2 * MAX_BLOCK + 64];
    static uint8_t block[MAX_BLOCK];
    char why[256];
    while (fgets(line, sizeof line, stdin)) {
        size_t length;
        uint64_t few_lo, few_hi;
        if (!parse_hex(line, block, &length)) {
            printf("error not machine code in hex (or over %d bytes)\n", MAX_BLOCK);
        } else if (fewest(block, length, lo, repeats, &few_lo, why) &&
                   fewest(block, length, hi, repeats, &few_hi, why)) {
            printf("ok %.4f\n", ((double)few_hi - (double)few_lo) / (double)(hi - lo));
        } else {
            printf("error %s\n", why);
        }
        unmap_touched();
        fflush(stdout);
    }
    return 0;
}
