; The Commons desktop app's Windows installer (NSIS 3, 64-bit): a per-user install under %LOCALAPPDATA%\Programs
; (no administrator rights, so the app can update itself in place), a Start menu entry, "Start Commons when I log
; in" as a choice (the same Run value the app's own switch writes), and an uninstaller that removes all of it: the
; files the app's updater leaves beside itself included. The volunteer's settings and credentials stay (they are
; the volunteer's, in %APPDATA%\commons and the Credential Manager).
;
;   makensis -WX -DVERSION=<version> -DEXE=<commons.exe> -DLOADER=<WebView2Loader.dll> -DOUT=<installer .exe> installer.nsi
;
; WebView2Loader.dll (built beside commons.exe by webview2-com) finds the WebView2 runtime that Windows 10 and 11
; ship; the window needs it. Where the runtime is missing, the installer says so and offers Microsoft's download page
; (a silent install goes on: the app donates from its tray without the window).
;
; A running Commons is asked to quit (`commons.exe --quit`: its containers stopped, its worker unregistered) before
; an upgrade replaces its files and before the uninstaller removes them.

Unicode true
Target amd64-unicode
!ifndef VERSION | EXE | LOADER | OUT
  !error "give -DVERSION=<version> -DEXE=<commons.exe> -DLOADER=<WebView2Loader.dll> -DOUT=<installer>"
!endif

!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\Commons"
!define RUN_KEY "Software\Microsoft\Windows\CurrentVersion\Run"
!define STARTUP_APPROVED_KEY "Software\Microsoft\Windows\CurrentVersion\Explorer\StartupApproved\Run"
; The Run value's name: the app's autostart switch (tauri-plugin-autostart, app name "commons") uses the same.
!define RUN_VALUE "commons"
; Where the WebView2 runtime registers its version, machine-wide (32-bit view) or for this user alone.
!define WEBVIEW2_KEY "SOFTWARE\WOW6432Node\Microsoft\EdgeUpdate\Clients\{F3017226-FE2A-4295-8BDF-00C3A9A7E4C5}"
!define WEBVIEW2_USER_KEY "Software\Microsoft\EdgeUpdate\Clients\{F3017226-FE2A-4295-8BDF-00C3A9A7E4C5}"
!define WEBVIEW2_DOWNLOAD "https://developer.microsoft.com/microsoft-edge/webview2/"

Name "Commons"
OutFile "${OUT}"
RequestExecutionLevel user
InstallDir "$LOCALAPPDATA\Programs\Commons"
InstallDirRegKey HKCU "Software\Commons" "InstallDir"
SetCompressor /SOLID lzma
VIProductVersion "${VERSION}.0"
VIAddVersionKey "ProductName" "Commons"
VIAddVersionKey "FileDescription" "Commons: donate your computer's spare power"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "LegalCopyright" "AGPL-3.0-or-later"

!include "MUI2.nsh"
!include "FileFunc.nsh"
!include "LogicLib.nsh"
!include "Sections.nsh"
!define MUI_ICON "..\..\..\icons\icon.ico"
!define MUI_UNICON "..\..\..\icons\icon.ico"
!define MUI_FINISHPAGE_RUN "$INSTDIR\commons.exe"
!define MUI_FINISHPAGE_RUN_TEXT "Open Commons"
!insertmacro MUI_PAGE_COMPONENTS
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

; Asks a running Commons in $INSTDIR to quit, then waits (at most 20 s) until its file can be written: the app has
; exited. `un.` for the uninstaller's copy.
!macro QUIT_RUNNING prefix
Function ${prefix}QuitRunning
  IfFileExists "$INSTDIR\commons.exe" 0 done
  Exec '"$INSTDIR\commons.exe" --quit'
  StrCpy $R0 0
  wait:
    Sleep 500
    ClearErrors
    FileOpen $R1 "$INSTDIR\commons.exe" a
    IfErrors 0 free
    IntOp $R0 $R0 + 1
    IntCmp $R0 40 done wait done
  free:
    FileClose $R1
  done:
FunctionEnd
!macroend
!insertmacro QUIT_RUNNING ""
!insertmacro QUIT_RUNNING "un."

Section "Commons" SecApp
  SectionIn RO
  Call QuitRunning
  SetOutPath "$INSTDIR"
  File "/oname=commons.exe" "${EXE}"
  File "/oname=WebView2Loader.dll" "${LOADER}"
  WriteUninstaller "$INSTDIR\uninstall.exe"
  CreateShortcut "$SMPROGRAMS\Commons.lnk" "$INSTDIR\commons.exe"
  WriteRegStr HKCU "Software\Commons" "InstallDir" "$INSTDIR"
  ; Settings > Apps lists it, for this user only.
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayName" "Commons"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "Publisher" "Commons"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayIcon" "$INSTDIR\commons.exe"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKCU "${UNINSTALL_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoRepair" 1
SectionEnd

Section /o "Start Commons when I log in" SecLogin
  WriteRegStr HKCU "${RUN_KEY}" "${RUN_VALUE}" '"$INSTDIR\commons.exe"'
SectionEnd

; `/LOGIN` on the command line chooses "Start Commons when I log in" (for a silent install: `/S /LOGIN`).
Function .onInit
  ${GetParameters} $0
  ClearErrors
  ${GetOptions} $0 "/LOGIN" $1
  ${IfNot} ${Errors}
    !insertmacro SelectSection ${SecLogin}
  ${EndIf}
  ; The window needs the WebView2 runtime (Windows 10 and 11 ship it; an old or stripped-down Windows may not).
  ReadRegStr $2 HKLM "${WEBVIEW2_KEY}" "pv"
  ${If} $2 == ""
  ${OrIf} $2 == "0.0.0.0"
    ReadRegStr $2 HKCU "${WEBVIEW2_USER_KEY}" "pv"
  ${EndIf}
  ${If} $2 == ""
  ${OrIf} $2 == "0.0.0.0"
    MessageBox MB_YESNO|MB_ICONINFORMATION "Commons's window needs Microsoft Edge WebView2 Runtime, which this computer does not have. Commons still donates from its tray icon without it.$\r$\n$\r$\nOpen Microsoft's download page now? (Install the Evergreen Runtime, then open Commons again.)" /SD IDNO IDNO webview2_done
    ExecShell "open" "${WEBVIEW2_DOWNLOAD}"
    webview2_done:
  ${EndIf}
FunctionEnd

!insertmacro MUI_FUNCTION_DESCRIPTION_BEGIN
  !insertmacro MUI_DESCRIPTION_TEXT ${SecApp} "The Commons app and its Start menu entry."
  !insertmacro MUI_DESCRIPTION_TEXT ${SecLogin} "Start Commons in the tray when you log in (you can change it in the app)."
!insertmacro MUI_FUNCTION_DESCRIPTION_END

Section "Uninstall"
  Call un.QuitRunning
  Delete /REBOOTOK "$INSTDIR\commons.exe"
  Delete /REBOOTOK "$INSTDIR\WebView2Loader.dll"
  ; What the updater leaves beside the app: the previous version, and a download cut short.
  Delete "$INSTDIR\commons.exe.previous"
  Delete "$INSTDIR\.commons-update-*"
  Delete "$INSTDIR\uninstall.exe"
  RMDir /REBOOTOK "$INSTDIR"
  Delete "$SMPROGRAMS\Commons.lnk"
  DeleteRegValue HKCU "${RUN_KEY}" "${RUN_VALUE}"
  DeleteRegValue HKCU "${STARTUP_APPROVED_KEY}" "${RUN_VALUE}"
  DeleteRegKey HKCU "${UNINSTALL_KEY}"
  DeleteRegKey HKCU "Software\Commons"
SectionEnd
