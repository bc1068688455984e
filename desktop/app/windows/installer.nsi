; The Commons desktop app's Windows installer (NSIS 3, 64-bit): a per-user install under %LOCALAPPDATA%\Programs
; (no administrator rights, so the app can update itself in place), a Start menu entry, "Start Commons when I log
; in" as a choice (the same Run value the app's own switch writes), and an uninstaller that removes all of it: the
; files the app's updater leaves beside itself included. The volunteer's settings and credentials stay (they are
; the volunteer's, in %APPDATA%\commons and the Credential Manager).
;
;   makensis -WX -DVERSION=<version> -DEXE=<commons.exe> -DLOADER=<WebView2Loader.dll> -DOUT=<installer .exe> installer.nsi
;
; WebView2Loader.dll (built beside commons.exe by webview2-com) finds the WebView2 runtime that Windows 10 and 11
; ship; the window needs it.

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

Section "Commons" SecApp
  SectionIn RO
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
FunctionEnd

!insertmacro MUI_FUNCTION_DESCRIPTION_BEGIN
  !insertmacro MUI_DESCRIPTION_TEXT ${SecApp} "The Commons app and its Start menu entry."
  !insertmacro MUI_DESCRIPTION_TEXT ${SecLogin} "Start Commons in the tray when you log in (you can change it in the app)."
!insertmacro MUI_FUNCTION_DESCRIPTION_END

Section "Uninstall"
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
