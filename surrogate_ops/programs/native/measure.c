// Basic blocks' throughput on the machine at hand, in user space, measured as BHive measures it.
//
// Each block (machine code, hex) is unrolled UNROLL_LO and UNROLL_HI times (both scaled up for short blocks,
// so that the copies, not the prologue, fill the timing, while the code stays within SCALE_BYTES, in the
// instruction cache) between a prologue and an epilogue written here; every general register, the stack
// pointer included, points at REG_VALUE, and a page the block touches is mapped on first touch (all of
// them onto one physical page whose every 8 bytes hold REG_VALUE before each run, so that pointer chains
// stay in mapped memory), up to MAX_PAGES a block. Both unrollings run once to map their pages and warm
// up, then REPEATS times in turns (so that a change of the core's clock meets both alike), each time as
// several calls back to back (as many as make a timing span TARGET_TICKS); the fewest time-stamp-counter
// ticks of each are kept, and the block's ticks per iteration are their difference over the difference of
// the unrollings (the prologue, the epilogue and the calls cancel). A block that faults (a page that cannot
// be mapped, a division error, an illegal instruction) or runs past the timer is reported with the reason
// and the next one goes on.
//
//   measure CPU UNROLL_LO UNROLL_HI REPEATS < hexes (one a line) > answers (one a line)
//   answer: "ok TICKS_PER_ITERATION REFERENCE_TICKS_PER_ITERATION" or "error REASON"
//
// The reference is a chain of dependent adds (1 cycle an iteration on every x86 core), timed in turns with
// the block: the core's clock moves (turbo, another core's load, the lower clock of wide vector work)
// while the time-stamp counter's does not, so a block's cycles are its ticks over the reference's.
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
#define TARGET_TICKS 20000          // ticks a timing should span at the lower unrolling
#define SCALE_BYTES 16384           // short blocks are unrolled more, up to this much code (L1i holds it)
#define MAX_SCALE 20
#define MAX_CALLS 64                // back-to-back runs a timing may span

static sigjmp_buf escape;
static volatile sig_atomic_t caught;
static volatile uintptr_t caught_address;
static volatile sig_atomic_t in_run;  // only a fault of the generated code is caught; the harness's own crash
static uint64_t saved_rsp;  // where the epilogue finds the harness's stack again
static int shared_page;     // the one physical page behind every page a block touches
static uintptr_t mapped[MAX_PAGES];
static int n_mapped;
static uint8_t *codes[4];  // the block's lower and higher unrolling, and the reference chain's
static int has_avx512;
static const uint8_t REFERENCE[] = {0x48, 0x01, 0xc0};  // addq %rax, %rax: a chain of 1-cycle adds
static int reference_calls;
static size_t code_size;
static uint64_t *page_words;  // the shared page, refilled before every run: each run starts alike
static int has_avx;

static void on_signal(int signal, siginfo_t *info, void *context) {
    (void)context;
    if (!in_run) {  // not the block's: the harness itself, which must not jump back into a finished run
        sigaction(signal, &(struct sigaction){.sa_handler = SIG_DFL}, NULL);
        raise(signal);
        return;
    }
    caught = signal;
    caught_address = (uintptr_t)info->si_addr;
    siglongjmp(escape, 1);
}

static uint8_t *code;  // the buffer `generate` writes

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
    uint8_t clear_high[96];  // vpxord %xmmN, %xmmN, %xmmN for N = 16..31: vzeroall leaves them (AVX-512)
    for (int k = 0; k < 16; k++) {
        uint8_t one[6] = {0x62, (uint8_t)(k < 8 ? 0xa1 : 0x01), (uint8_t)(0x7d - 8 * (k % 8)), 0x00, 0xef,
                          (uint8_t)(0xc0 + 9 * (k % 8))};
        memcpy(clear_high + 6 * k, one, 6);
    }
    size_t need = 256 + length * (size_t)unroll;
    if (need > code_size) return 0;
    size_t at = put(0, save, sizeof save);
    at = put_movabs(at, 0, (uint64_t)&saved_rsp);
    at = put(at, store_rsp, sizeof store_rsp);
    at = put(at, fninit, sizeof fninit);
    if (has_avx) at = put(at, vzeroall, sizeof vzeroall);
    if (has_avx512) at = put(at, clear_high, sizeof clear_high);
    for (int reg = 0; reg < 16; reg++) at = put_movabs(at, reg, REG_VALUE);  // rsp (4) too
    for (int k = 0; k < unroll; k++) at = put(at, block, length);
    at = put_movabs(at, 0, (uint64_t)&saved_rsp);
    at = put(at, load_rsp, sizeof load_rsp);
    at = put(at, restore, sizeof restore);
    at = put(at, fninit, sizeof fninit);
    at = put(at, cld, sizeof cld);
    if (has_avx512) at = put(at, clear_high, sizeof clear_high);  // no dirty upper state outlives the block
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
    if (page >= CODE_BASE && page < CODE_BASE + 4 * code_size) return 0;
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

// `calls` back-to-back runs of the generated code: their ticks, or a signal (its address in `caught_address`)
static int run(int which, uint64_t *ticks, int calls) {
    volatile uint64_t t0 = 0, t1 = 0;
    unsigned int mxcsr = _mm_getcsr();
    struct itimerval timer = {{0, 0}, {0, 200000}}, off = {{0, 0}, {0, 0}};
    caught = 0;
    for (size_t k = 0; k < PAGE / 8; k++) page_words[k] = REG_VALUE;  // a block's stores do not carry over
    if (sigsetjmp(escape, 1) == 0) {
        _mm_setcsr(0x9fc0);  // all exceptions masked, flush-to-zero and denormals-are-zero: no microcode assists
        setitimer(ITIMER_REAL, &timer, NULL);
        in_run = 1;
        t0 = tsc_start();
        for (int k = 0; k < calls; k++) ((void (*)(void))codes[which])();
        t1 = tsc_stop();
    }
    in_run = 0;
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

// `unroll` copies generated into buffer `which` and run once, mapping every page the block touches: its
// ticks, or 0 on a fault (the reason in `why`)
static int warm(int which, const uint8_t *block, size_t length, int unroll, uint64_t *ticks, char *why) {
    code = codes[which];
    if (!generate(block, length, unroll)) {
        snprintf(why, 200, "block of %zu bytes too long for the code buffer", length);
        return 0;
    }
    for (;;) {
        int signal = run(which, ticks, 1);
        if (!signal) return 1;
        if ((signal == SIGSEGV || signal == SIGBUS) && map_touched(caught_address)) continue;
        if (signal == SIGSEGV)
            snprintf(why, 200, "%s at 0x%lx (unmappable, or over %d pages)", reason(signal),
                     (unsigned long)caught_address, MAX_PAGES);
        else
            snprintf(why, 200, "%s", reason(signal));
        return 0;
    }
}

// one timing of `calls` runs of buffer `which`; a page a later call reaches (stores moved a pointer) is
// mapped and the timing taken again
static int timed(int which, int calls, uint64_t *ticks, char *why) {
    for (;;) {
        int signal = run(which, ticks, calls);
        if (!signal) return 1;
        if ((signal == SIGSEGV || signal == SIGBUS) && map_touched(caught_address)) continue;
        snprintf(why, 200, "%s on a repeat", reason(signal));
        return 0;
    }
}

static void scaled(size_t length, int *lo, int *hi) {
    int scale = (int)(SCALE_BYTES / (length * (size_t)*hi));
    scale = scale < 1 ? 1 : scale > MAX_SCALE ? MAX_SCALE : scale;
    *lo *= scale;
    *hi *= scale;
}

static int calls_for(uint64_t ticks) {
    int calls = (int)((TARGET_TICKS + (ticks ? ticks : 1) - 1) / (ticks ? ticks : 1));
    return calls < 1 ? 1 : calls > MAX_CALLS ? MAX_CALLS : calls;
}

// the block's ticks per iteration and the reference chain's (1 cycle an iteration) at the same time:
// both unrollings of each warmed, then all four timed in turns, the fewest of each kept
static int measure_block(const uint8_t *block, size_t length, int lo, int hi, int repeats, double *per,
                         double *reference, char *why) {
    int ref_lo = lo, ref_hi = hi;
    scaled(length, &lo, &hi);
    scaled(sizeof REFERENCE, &ref_lo, &ref_hi);
    uint64_t ticks, best[4] = {UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX};
    if (!warm(0, block, length, lo, &ticks, why)) return 0;
    int calls = calls_for(ticks);
    if (!warm(1, block, length, hi, &ticks, why)) return 0;
    for (int k = 0; k < repeats; k++) {
        for (int which = 0; which < 4; which++) {
            if (!timed(which, which < 2 ? calls : reference_calls, &ticks, why)) return 0;
            if (ticks < best[which]) best[which] = ticks;
        }
    }
    *per = ((double)best[1] - (double)best[0]) / ((double)calls * (hi - lo));
    *reference = ((double)best[3] - (double)best[2]) / ((double)reference_calls * (ref_hi - ref_lo));
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
    has_avx512 = __builtin_cpu_supports("avx512f");
    shared_page = memfd_create("measure-page", 0);
    if (shared_page < 0 || ftruncate(shared_page, PAGE)) {
        perror("measure: memfd");
        return 1;
    }
    page_words = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, shared_page, 0);
    if (page_words == MAP_FAILED) {
        perror("measure: shared page");
        return 1;
    }
    code_size = 256 + (size_t)MAX_BLOCK * hi;
    if (code_size < 256 + (size_t)SCALE_BYTES) code_size = 256 + (size_t)SCALE_BYTES;
    code_size = (code_size + PAGE - 1) & ~(PAGE - 1);
    uint8_t *buffers = mmap((void *)CODE_BASE, 4 * code_size, PROT_READ | PROT_WRITE | PROT_EXEC,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (buffers == MAP_FAILED) {
        perror("measure: code buffer");
        return 1;
    }
    for (int k = 0; k < 4; k++) codes[k] = buffers + k * code_size;
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

    char why[256];
    int ref_lo = lo, ref_hi = hi;
    uint64_t ticks;
    scaled(sizeof REFERENCE, &ref_lo, &ref_hi);
    if (!warm(2, REFERENCE, sizeof REFERENCE, ref_lo, &ticks, why) ||
        !warm(3, REFERENCE, sizeof REFERENCE, ref_hi, &ticks, why)) {
        fprintf(stderr, "measure: the reference chain: %s\n", why);
        return 1;
    }
    reference_calls = calls_for(ticks / 2);
    static char line[2 * MAX_BLOCK + 64];
    static uint8_t block[MAX_BLOCK];
    while (fgets(line, sizeof line, stdin)) {
        size_t length;
        double per, reference;
        if (!parse_hex(line, block, &length)) {
            printf("error not machine code in hex (or over %d bytes)\n", MAX_BLOCK);
        } else if (measure_block(block, length, lo, hi, repeats, &per, &reference, why)) {
            printf("ok %.4f %.4f\n", per, reference);
        } else {
            printf("error %s\n", why);
        }
        unmap_touched();
        fflush(stdout);
    }
    return 0;
}
