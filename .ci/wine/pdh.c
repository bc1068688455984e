/* Wine 8 (Debian 12) declares pdh.dll's PdhEnumObjectsW but does not implement it: a call aborts the process
 * ("unimplemented function pdh.dll.PdhEnumObjectsW"). sysinfo calls it to ask for a reload of the performance
 * counters when the CPU counters cannot be opened, which under Wine is at its second CPU-load reading, so the agent
 * died at its first heartbeat. This stand-in, built with mingw-w64 into the Wine prefix of .ci/windows only,
 * implements that call (there is nothing to reload: Wine's counters are built in) and forwards every other function
 * the programs import (pdh.def) to Wine's own pdh.dll, copied beside it as pdhwine.dll. Windows ships the real DLL. */
#include <windows.h>

LONG WINAPI PdhEnumObjectsW(LPCWSTR source, LPCWSTR machine, LPWSTR list, LPDWORD length, DWORD detail,
                            BOOL refresh) {
    (void)source;
    (void)machine;
    (void)list;
    (void)detail;
    (void)refresh;
    if (length) {
        *length = 0;
    }
    return ERROR_SUCCESS;
}
