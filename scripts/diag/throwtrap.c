/*
 * Diagnostic preload for the librbd abort of issue 10 (not shipped, not used by the tests).
 *
 * librbd/librados abort with "terminate called after throwing an instance of 'std::system_error'" when a
 * std::mutex::lock fails; by the time std::terminate runs, the frames of the thrower are unwound, so a core shows
 * only the io_context thread's entry. Preloaded, this replaces libstdc++'s std::__throw_system_error (called through
 * the PLT by every inlined mutex lock in librbd/librados), prints the thrower's stack (addresses inside librbd.so.1
 * and librados.so.2; map them with objdump -d, the libraries are stripped) and aborts there, so the core keeps it.
 *
 * Build: gcc -shared -fPIC -O1 -o throwtrap.so throwtrap.c
 * Use:   LD_PRELOAD=/path/throwtrap.so MALLOC_PERTURB_=165 platter serve ...   (see rbd-abort-repro.sh)
 */
#define _GNU_SOURCE
#include <execinfo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void _ZSt20__throw_system_errori(int error)
{
    void *frames[64];
    int count = backtrace(frames, 64);
    char line[160];
    int length = snprintf(line, sizeof line, "throwtrap: std::__throw_system_error(%d: %s) on thread %d\n",
                          error, strerror(error), (int)gettid());
    if (write(2, line, (size_t)length) < 0) { /* nothing to do: we abort next */ }
    backtrace_symbols_fd(frames, count, 2);
    abort();
}
