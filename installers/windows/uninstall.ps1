<#
.SYNOPSIS
    Removes essaim from Windows: the tray, its Start menu and Startup entries, and essaim inside WSL.

.DESCRIPTION
    Stops the tray and `essaim run --headless`, runs the Linux uninstaller inside the WSL
    distribution (which removes essaim's environment and, unless -KeepData, its settings, identity,
    cache and logs), then deletes every file install.ps1 made on the Windows side (listed in
    %LOCALAPPDATA%\essaim\installed-files.txt). The WSL distribution itself stays: -RemoveDistro
    unregisters it too, and only when install.ps1 installed it (this deletes everything in it).

.EXAMPLE
    powershell -NoProfile -ExecutionPolicy Bypass -File "$env:LOCALAPPDATA\essaim\uninstall.ps1" -KeepData
#>
[CmdletBinding()]
param(
    # Keep essaim's settings (config.toml), identity key, cache and logs inside WSL for a later install.
    [switch]$KeepData,
    # Also unregister the WSL distribution, when install.ps1 installed it.
    [switch]$RemoveDistro,
    # Show what would be removed, and change nothing.
    [switch]$DryRun
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
$env:WSL_UTF8 = '1'

$InstallDir = Join-Path $env:LOCALAPPDATA 'essaim'
$Manifest = Join-Path $InstallDir 'installed-files.txt'
$SettingsFile = Join-Path $InstallDir 'settings.json'

function Say([string]$Message) { Write-Host "essaim: $Message" }

function Remove-Path([string]$Path) {
    if (-not (Test-Path -LiteralPath $Path)) { return }
    if ($DryRun) {
        Say "would remove $Path"
        return
    }
    Remove-Item -LiteralPath $Path -Force -Recurse
}

function Invoke-WslQuietly([string[]]$Arguments) {
    # Runs wsl.exe and returns its exit code; its output goes to this console.
    if ($DryRun) {
        Say "would run: wsl.exe $($Arguments -join ' ')"
        return 0
    }
    & wsl.exe @Arguments
    return $LASTEXITCODE
}

$settings = $null
if (Test-Path -LiteralPath $SettingsFile) { $settings = Get-Content -LiteralPath $SettingsFile -Raw | ConvertFrom-Json }
function Get-Setting([string]$Name, $Default) {
    if (-not $settings) { return $Default }
    $property = $settings.PSObject.Properties[$Name]
    if ($property -and $null -ne $property.Value) { return $property.Value }
    return $Default
}
$Distro = Get-Setting 'distro' 'Ubuntu'
$LinuxData = Get-Setting 'linuxDataDir' ''

# 1. the tray (it stops `essaim run --headless` when it quits; the Linux uninstaller makes sure)
$trays = @(Get-CimInstance Win32_Process -Filter "Name = 'powershell.exe' OR Name = 'pwsh.exe'" |
        Where-Object { $_.CommandLine -and $_.CommandLine -like '*essaim-tray.ps1*' })
foreach ($tray in $trays) {
    Say "stopping the essaim tray (process $($tray.ProcessId))"
    if (-not $DryRun) { Stop-Process -Id $tray.ProcessId -Force -ErrorAction SilentlyContinue }
}

# 2. essaim inside WSL
$linuxArguments = @()
if ($KeepData) { $linuxArguments += '--keep-data' }
if ($DryRun) { $linuxArguments += '--dry-run' }
$wslHasDistro = $false
if (Get-Command wsl.exe -ErrorAction SilentlyContinue) {
    $names = (& wsl.exe --list --quiet) -replace "`0", ''
    $wslHasDistro = @($names | ForEach-Object { $_.Trim() }) -contains $Distro
}
if ($wslHasDistro) {
    $uninstaller = if ($LinuxData) { "$LinuxData/uninstall.sh" } else { '' }
    $code = 1
    if ($uninstaller) {
        $code = Invoke-WslQuietly (@('-d', $Distro, '--exec', 'test', '-f', $uninstaller))
        if ($code -eq 0) { $code = Invoke-WslQuietly (@('-d', $Distro, '--exec', 'bash', $uninstaller) + $linuxArguments) }
    }
    if ($code -ne 0) {
        $local = Join-Path $PSScriptRoot '..\linux\uninstall.sh'
        if (Test-Path -LiteralPath $local) {
            $full = (Resolve-Path -LiteralPath $local).ProviderPath
            $linuxPath = ((& wsl.exe -d $Distro --exec wslpath -a -u $full) | Select-Object -Last 1).Trim()
            $code = Invoke-WslQuietly (@('-d', $Distro, '--exec', 'bash', $linuxPath) + $linuxArguments)
        }
    }
    if ($code -ne 0) {
        Say "warning: could not run essaim's Linux uninstaller in $Distro: run installers/linux/uninstall.sh there yourself"
    }
} else {
    Say "the WSL distribution $Distro is not there: nothing to remove inside WSL"
}

# 3. the Windows side: files first, then the folders the installer created (deepest first)
$entries = @()
if (Test-Path -LiteralPath $Manifest) {
    $entries = @(Get-Content -LiteralPath $Manifest | Where-Object { $_ -match '^(file|dir) ' })
}
$known = @(
    "file $(Join-Path ([Environment]::GetFolderPath('Startup')) 'essaim.lnk')",
    "file $(Join-Path ([Environment]::GetFolderPath('Programs')) 'essaim.lnk')"
)
$folders = @()
foreach ($line in ($entries + $known)) {
    $kind, $path = $line -split ' ', 2
    if ($kind -eq 'file') { Remove-Path $path }
    else { $folders += $path }
}
foreach ($name in @('essaim-tray.ps1', 'essaim.ico', 'settings.json', 'installed-files.txt')) {
    Remove-Path (Join-Path $InstallDir $name)
}
foreach ($folder in ($folders | Select-Object -Unique | Sort-Object -Property Length -Descending)) {
    if ((Test-Path -LiteralPath $folder) -and -not (Get-ChildItem -LiteralPath $folder -Force | Select-Object -First 1)) {
        Remove-Path $folder
    }
}
# this script's own copy goes last; the folder with it when nothing else is left there
$self = Join-Path $InstallDir 'uninstall.ps1'
if (Test-Path -LiteralPath $self) {
    Remove-Path $self
    if ((Test-Path -LiteralPath $InstallDir) -and -not (Get-ChildItem -LiteralPath $InstallDir -Force | Select-Object -First 1)) {
        Remove-Path $InstallDir
    }
}

# 4. the distribution, when asked and when install.ps1 installed it
if ($RemoveDistro) {
    if ((Get-Setting 'distroInstalledByEssaim' $false) -and $wslHasDistro) {
        Say "unregistering the WSL distribution $Distro (everything in it is deleted)"
        $null = Invoke-WslQuietly @('--unregister', $Distro)
    } else {
        Say "not removing $Distro: essaim's installer did not install it"
    }
}
Say 'essaim is removed'
