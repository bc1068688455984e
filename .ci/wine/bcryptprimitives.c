/* Wine 8 (Debian 12) lacks bcryptprimitives.dll, whose ProcessPrng Rust's standard library (1.78 on) imports for
 * random bytes on Windows. This stand-in, built with mingw-w64 into the Wine prefix of .ci/windows only, gives it
 * from RtlGenRandom (advapi32's SystemFunction036), which Wine has. Windows itself ships the real DLL. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
