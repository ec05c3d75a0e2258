; Inno Setup 6 script: a per-user Windows installer around the one-folder build.
;
;   pyinstaller --noconfirm packaging\transferstudio.spec          (makes dist\TransferStudio\)
;   iscc /DAppVersion=0.1.0 packaging\windows\transferstudio.iss    (makes dist\TransferStudio-0.1.0-windows-x64-setup.exe)
;
; See packaging\README.md for signing the executables and the installer.

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#define AppName "TransferStudio"
#define BuildDir "..\..\dist\TransferStudio"

[Setup]
; Never change AppId: it is how an upgrade finds and replaces the installed version.
AppId={{2FB81236-93BE-45C2-BA01-9BAF2EF3B8B3}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher={#AppName}
VersionInfoVersion={#AppVersion}
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
; Artists often have no admin rights: install per user unless they choose all users.
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
SetupIconFile=..\..\resources\icons\transferstudio.ico
UninstallDisplayIcon={app}\TransferStudio.exe
WizardStyle=modern
OutputDir=..\..\dist
OutputBaseFilename={#AppName}-{#AppVersion}-windows-x64-setup
; A CUDA build is several GB: non-solid LZMA2 keeps memory and time sane, and disk spanning
; (setup.exe + setup-*.bin, shipped side by side) is required above 4.2 GB compressed.
Compression=lzma2/normal
SolidCompression=no
DiskSpanning=yes
DiskSliceSize=max
; Sign setup and uninstaller when a signing tool is configured (iscc /Ssigntool=...).
#ifdef SignTool
SignTool=signtool
SignedUninstaller=yes
#endif

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"

[InstallDelete]
; An upgrade must not mix the old version's libraries with the new ones.
Type: filesandordirs; Name: "{app}\_internal"

[Files]
Source: "{#BuildDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\TransferStudio.exe"
; For support requests: runs the self-check in a console that stays open.
Name: "{group}\{#AppName} Self-Check"; Filename: "{cmd}"; \
  Parameters: "/k """"{app}\transferstudio-cli.exe"" --self-check"""; WorkingDir: "{userdocs}"
Name: "{group}\{cm:UninstallProgram,{#AppName}}"; Filename: "{uninstallexe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\TransferStudio.exe"; Tasks: desktopicon

[Run]
Filename: "{app}\TransferStudio.exe"; Description: "{cm:LaunchProgram,{#AppName}}"; \
  Flags: nowait postinstall skipifsilent
