<#
.SYNOPSIS
    Installs essaim on Windows: inside WSL2, with a tray icon and a Startup entry on the Windows side.

.DESCRIPTION
    hivemind, essaim's peer-to-peer engine, has no native Windows build, so essaim runs inside a WSL2
    Linux distribution and this installer makes it reachable from Windows:

    1. Checks WSL2; when it is missing, installs it (`wsl --install --no-distribution`, which asks for
       an administrator's consent) and asks you to restart Windows and run this again.
    2. Installs the Linux distribution (-Distro, default Ubuntu) when it is missing: a Linux console
       opens and asks you for a user name and password; type `exit` there when it shows a prompt.
    3. Makes sure the distribution has Python 3.11 or newer with venv (apt-get, as root inside WSL).
    4. Runs installers/linux/install.sh inside it, with --no-autostart --no-menu --no-start (Windows
       starts essaim, not systemd) and your -Wheel, -Coordinator, -TorchSpec and -PipArgs. NVIDIA GPUs
       work inside WSL2 through the Windows driver, so it picks the CUDA build when nvidia-smi answers.
    5. Puts the tray (essaim-tray.ps1 and the icon) in %LOCALAPPDATA%\essaim, adds an essaim entry to
       the Start menu and to the Startup folder (both start the tray, hidden), and starts it now.
       The tray runs `essaim run --headless` in WSL, pauses it while you use Windows, and shows its
       state; see installers/README.md for the route and its limits.

    Running it again changes nothing. Remove essaim with uninstall.ps1 (also copied to
    %LOCALAPPDATA%\essaim).

.EXAMPLE
    powershell -NoProfile -ExecutionPolicy Bypass -File install.ps1 -Coordinator coordinator.example.org:50051

.EXAMPLE
    powershell -NoProfile -ExecutionPolicy Bypass -File install.ps1 -Wheel .\essaim-0.1.0-py3-none-any.whl -DryRun
#>
[CmdletBinding()]
param(
    # A wheel to install essaim from, instead of the package index.
    [string]$Wheel,
    # The coordinator to join, HOST:PORT; written to essaim's config.toml inside WSL.
    [string]$Coordinator,
    # The WSL distribution essaim lives in; installed when missing.
    [string]$Distro = 'Ubuntu',
    # The PyTorch requirement, e.g. 'torch==2.13.0' (default: the build for the detected hardware).
    [string]$TorchSpec,
    # Extra options for every pip call inside WSL, e.g. '--index-url https://mirror.example/simple'.
    [string]$PipArgs,
    # Minutes without keyboard or mouse input before essaim trains (essaim's policy.idle_minutes,
    # set inside WSL; the tray reads it from there). Left out: essaim's own setting is kept.
    [ValidateRange(0, 1440)][int]$IdleMinutes = -1,
    # Do not start the tray now.
    [switch]$NoStart,
    # Show what would be done, and change nothing.
    [switch]$DryRun
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
$env:WSL_UTF8 = '1'  # wsl.exe's own messages in UTF-8 rather than UTF-16
[Console]::OutputEncoding = [System.Text.Encoding]::UTF8

$InstallDir = Join-Path $env:LOCALAPPDATA 'essaim'
$Manifest = Join-Path $InstallDir 'installed-files.txt'
$SettingsFile = Join-Path $InstallDir 'settings.json'
$StartupLink = Join-Path ([Environment]::GetFolderPath('Startup')) 'essaim.lnk'
$MenuLink = Join-Path ([Environment]::GetFolderPath('Programs')) 'essaim.lnk'
$PowerShellExe = Join-Path $env:SystemRoot 'System32\WindowsPowerShell\v1.0\powershell.exe'
$Entries = New-Object System.Collections.Generic.List[string]

function Say([string]$Message) { Write-Host "essaim: $Message" }

function Fail([string]$Message) {
    Write-Host "essaim: error: $Message" -ForegroundColor Red
    exit 1
}

function ConvertTo-Argument([string]$Value) {
    # Quotes one argument by the rules Windows programs (wsl.exe included) use to split a command line.
    if ($Value -and $Value -notmatch '[\s"]') { return $Value }
    $escaped = $Value -replace '(\\*)"', '$1$1\"'
    $escaped = $escaped -replace '(\\+)$', '$1$1'
    return '"' + $escaped + '"'
}

function Invoke-Wsl {
    # Runs wsl.exe with these arguments. With -Capture it returns @{ Code; Output }, otherwise its
    # output goes to this console and it fails unless -AllowFailure.
    param([string[]]$Arguments, [switch]$Capture, [switch]$AllowFailure, [int]$TimeoutSeconds = 3600)
    $info = New-Object System.Diagnostics.ProcessStartInfo
    $info.FileName = 'wsl.exe'
    $info.Arguments = ($Arguments | ForEach-Object { ConvertTo-Argument $_ }) -join ' '
    $info.UseShellExecute = $false
    if ($Capture) {
        $info.RedirectStandardOutput = $true
        $info.RedirectStandardError = $true
        $info.StandardOutputEncoding = [System.Text.Encoding]::UTF8
        $info.StandardErrorEncoding = [System.Text.Encoding]::UTF8
    }
    $process = [System.Diagnostics.Process]::Start($info)
    $stdout = $null
    $stderr = $null
    if ($Capture) {
        $stdout = $process.StandardOutput.ReadToEndAsync()
        $stderr = $process.StandardError.ReadToEndAsync()
    }
    if (-not $process.WaitForExit($TimeoutSeconds * 1000)) {
        $process.Kill()
        Fail "wsl.exe $($info.Arguments) did not finish within $TimeoutSeconds s"
    }
    $process.WaitForExit()
    $output = ''
    if ($Capture) { $output = (($stdout.Result + $stderr.Result) -replace "`0", '').Trim() }
    if ($process.ExitCode -ne 0 -and -not $AllowFailure) {
        Fail "wsl.exe $($info.Arguments) failed (exit code $($process.ExitCode)) $output"
    }
    return [pscustomobject]@{ Code = $process.ExitCode; Output = $output }
}

function Get-Distributions {
    $result = Invoke-Wsl -Arguments @('--list', '--quiet') -Capture -AllowFailure -TimeoutSeconds 60
    if ($result.Code -ne 0) { return @() }
    return @($result.Output -split "`r?`n" | ForEach-Object { $_.Trim() } | Where-Object { $_ })
}

function Install-Wsl {
    if ([Environment]::OSVersion.Version.Build -lt 19041) {
        Fail 'WSL2 needs Windows 10 version 2004 (build 19041) or newer, or Windows 11: update Windows first'
    }
    Say 'WSL2 is not installed: installing it (Windows asks for an administrator''s consent)'
    if ($DryRun) {
        Say 'would run, as administrator: wsl.exe --install --no-distribution'
        return
    }
    try {
        $process = Start-Process -FilePath 'wsl.exe' -ArgumentList '--install', '--no-distribution' -Verb RunAs -Wait -PassThru
    } catch {
        Fail "could not start the WSL installation ($($_.Exception.Message)): run 'wsl --install' in an administrator PowerShell, restart, then run this again"
    }
    if ($process.ExitCode -ne 0) {
        Fail "wsl --install failed (exit code $($process.ExitCode)): see https://learn.microsoft.com/windows/wsl/install, then run this again"
    }
    Say 'WSL2 is installed. Restart Windows, then run this installer again to finish.'
    exit 3010
}

function Install-Distribution {
    Say "installing the Linux distribution $Distro. A Linux console opens: choose a user name and a password, then type 'exit' at its prompt to come back here."
    if ($DryRun) {
        Say "would run: wsl.exe --install --distribution $Distro"
        return
    }
    $null = Invoke-Wsl -Arguments @('--install', '--distribution', $Distro)
    if ((Get-Distributions) -notcontains $Distro) {
        Fail "$Distro is not installed: install it with 'wsl --install -d $Distro', open it once to create your user, then run this again"
    }
    $script:DistroInstalled = $true
}

function Install-Python {
    # Python 3.11+ with venv inside the distribution (Ubuntu 24.04 has 3.12; 22.04 gets python3.11).
    $check = 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))'
    $ok = Invoke-Wsl -Arguments @('-d', $Distro, '--exec', 'python3', '-c', $check) -Capture -AllowFailure -TimeoutSeconds 120
    if ($ok.Code -eq 0) { return }
    $ok = Invoke-Wsl -Arguments @('-d', $Distro, '--exec', 'python3.11', '-c', $check) -Capture -AllowFailure -TimeoutSeconds 120
    if ($ok.Code -eq 0) { return }
    Say "installing Python with venv in $Distro (apt-get, as root inside WSL)"
    $script = 'apt-get update -q && apt-get install -y -q python3-venv python3-pip && { python3 -c ''import sys; sys.exit(sys.version_info < (3, 11))'' || apt-get install -y -q python3.11 python3.11-venv; }'
    if ($DryRun) {
        Say "would run in $Distro as root: $script"
        return
    }
    $result = Invoke-Wsl -Arguments @('-d', $Distro, '-u', 'root', '--exec', 'sh', '-c', $script) -AllowFailure
    if ($result.Code -ne 0) {
        Fail "could not install Python 3.11+ in $Distro (is it a Debian or Ubuntu?): install Python 3.11 or newer with its venv module there, then run this again"
    }
}

function ConvertTo-WslPath([string]$Path) {
    $full = (Resolve-Path -LiteralPath $Path).ProviderPath
    $result = Invoke-Wsl -Arguments @('-d', $Distro, '--exec', 'wslpath', '-a', '-u', $full) -Capture -TimeoutSeconds 60
    return ($result.Output -split "`r?`n" | Select-Object -Last 1).Trim()
}

function Get-LinuxFolder([string]$Variable, [string]$Default) {
    # A folder inside WSL, e.g. ${XDG_DATA_HOME:-$HOME/.local/share}/essaim.
    $script = 'echo ${' + $Variable + ':-$HOME/' + $Default + '}/essaim'
    $result = Invoke-Wsl -Arguments @('-d', $Distro, '--exec', 'sh', '-c', $script) -Capture -TimeoutSeconds 60
    return ($result.Output -split "`r?`n" | Select-Object -Last 1).Trim()
}

function Install-Linux {
    $installer = Join-Path $PSScriptRoot '..\linux\install.sh'
    if (-not (Test-Path -LiteralPath $installer)) {
        Fail "$installer is missing: run install.ps1 from the essaim installers folder (it needs linux\install.sh beside it)"
    }
    $arguments = @('-d', $Distro, '--cd', '~', '--exec', 'bash', (ConvertTo-WslPath $installer), '--no-autostart', '--no-menu', '--no-start')
    if ($Wheel) { $arguments += @('--wheel', (ConvertTo-WslPath $Wheel)) }
    if ($Coordinator) { $arguments += @('--coordinator', $Coordinator) }
    if ($TorchSpec) { $arguments += @('--torch-spec', $TorchSpec) }
    if ($PipArgs) { $arguments += @('--pip-args', $PipArgs) }
    if ($DryRun) { $arguments += '--dry-run' }
    Say "installing essaim inside $Distro"
    $null = Invoke-Wsl -Arguments $arguments
}

function Add-Entry([string]$Kind, [string]$Path) { $Entries.Add("$Kind $Path") }

function New-Folder([string]$Path) {
    if (Test-Path -LiteralPath $Path) { return }
    $parent = Split-Path -Parent $Path
    if ($parent) { New-Folder $parent }
    Add-Entry 'dir' $Path
    if ($DryRun) {
        Say "would create $Path"
        return
    }
    $null = New-Item -ItemType Directory -Path $Path
}

function Test-SameBytes([byte[]]$A, [byte[]]$B) {
    return $A.Length -eq $B.Length -and [Convert]::ToBase64String($A) -eq [Convert]::ToBase64String($B)
}

function Set-FileBytes([string]$Path, [byte[]]$Bytes) {
    # Writes the file only when its content differs, so that a second run changes nothing.
    Add-Entry 'file' $Path
    if (Test-Path -LiteralPath $Path) {
        $old = [System.IO.File]::ReadAllBytes($Path)
        if (Test-SameBytes $old $Bytes) { return }
    }
    if ($DryRun) {
        Say "would write $Path"
        return
    }
    New-Folder (Split-Path -Parent $Path)
    [System.IO.File]::WriteAllBytes($Path, $Bytes)
    Say "wrote $Path"
}

function Copy-Asset([string]$Source, [string]$Destination) {
    if (-not (Test-Path -LiteralPath $Source)) {
        Say "warning: $Source is missing"
        return
    }
    Set-FileBytes $Destination ([System.IO.File]::ReadAllBytes($Source))
}

function Set-Shortcut([string]$Path, [string]$Arguments, [string]$Icon) {
    Add-Entry 'file' $Path
    $shell = New-Object -ComObject WScript.Shell
    if (Test-Path -LiteralPath $Path) {
        $old = $shell.CreateShortcut($Path)
        if ($old.TargetPath -eq $PowerShellExe -and $old.Arguments -eq $Arguments -and $old.IconLocation -eq "$Icon,0") { return }
    }
    if ($DryRun) {
        Say "would create the shortcut $Path"
        return
    }
    New-Folder (Split-Path -Parent $Path)
    $link = $shell.CreateShortcut($Path)
    $link.TargetPath = $PowerShellExe
    $link.Arguments = $Arguments
    $link.IconLocation = "$Icon,0"
    $link.WorkingDirectory = $InstallDir
    $link.WindowStyle = 7  # minimized: PowerShell hides its own window at once
    $link.Description = 'essaim: lend this computer''s idle time to fine-tune open language models'
    $link.Save()
    Say "wrote $Path"
}

function Read-Manifest {
    if (-not (Test-Path -LiteralPath $Manifest)) { return @() }
    return @(Get-Content -LiteralPath $Manifest | Where-Object { $_ -match '^(file|dir) ' })
}

function Write-Manifest {
    # Folders made by an earlier run stay listed; files an earlier run made and this one does not are removed.
    foreach ($line in Read-Manifest) {
        if ($Entries.Contains($line)) { continue }
        $kind, $path = $line -split ' ', 2
        if ($kind -eq 'dir' -and (Test-Path -LiteralPath $path)) { $Entries.Add($line) }
        elseif ($kind -eq 'file' -and (Test-Path -LiteralPath $path) -and -not $DryRun) { Remove-Item -LiteralPath $path -Force }
    }
    $lines = @('# essaim: what the installer made; uninstall.ps1 reads this list') + @($Entries | Sort-Object -Unique)
    $bytes = [System.Text.Encoding]::UTF8.GetBytes(($lines -join "`r`n") + "`r`n")
    if ($DryRun) {
        Say "would list $($Entries.Count) installed paths in $Manifest"
        return
    }
    if ((Test-Path -LiteralPath $Manifest) -and (Test-SameBytes ([System.IO.File]::ReadAllBytes($Manifest)) $bytes)) { return }
    [System.IO.File]::WriteAllBytes($Manifest, $bytes)
}

function Test-TrayRunning {
    $mutex = $null
    if ([System.Threading.Mutex]::TryOpenExisting('Local\essaim-tray', [ref]$mutex)) {
        $mutex.Dispose()
        return $true
    }
    return $false
}

# --- main ---------------------------------------------------------------------------------------
if ($Coordinator -and $Coordinator -notmatch '^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$') {
    Fail "-Coordinator wants HOST:PORT (e.g. coordinator.example.org:50051), not '$Coordinator'"
}
if ($Wheel -and -not (Test-Path -LiteralPath $Wheel)) { Fail "-Wheel: $Wheel does not exist" }
if ($DryRun) { Say 'dry run: nothing will be changed' }

# an earlier run that installed the distribution keeps saying so, for uninstall.ps1 -RemoveDistro
$script:DistroInstalled = $false
if (Test-Path -LiteralPath $SettingsFile) {
    $previous = Get-Content -LiteralPath $SettingsFile -Raw | ConvertFrom-Json
    $flag = $previous.PSObject.Properties['distroInstalledByEssaim']
    $name = $previous.PSObject.Properties['distro']
    if ($flag -and $flag.Value -and $name -and $name.Value -eq $Distro) { $script:DistroInstalled = $true }
}

$wslReady = $false
if (Get-Command wsl.exe -ErrorAction SilentlyContinue) {
    foreach ($probe in @('--version', '--status')) {
        if ((Invoke-Wsl -Arguments @($probe) -Capture -AllowFailure -TimeoutSeconds 60).Code -eq 0) { $wslReady = $true }
    }
}
if (-not $wslReady) { Install-Wsl }  # ends the run, but for a dry run
$haveDistro = $wslReady -and ((Get-Distributions) -contains $Distro)
if ($wslReady -and -not $haveDistro) {
    Install-Distribution
    $haveDistro = -not $DryRun
}
if ($haveDistro) {
    Install-Python
    Install-Linux
    $linuxData = Get-LinuxFolder 'XDG_DATA_HOME' '.local/share'
    $linuxState = Get-LinuxFolder 'XDG_STATE_HOME' '.local/state'
} else {
    $linuxData = '~/.local/share/essaim'
    $linuxState = '~/.local/state/essaim'
}

if ($haveDistro -and $IdleMinutes -ge 0) {
    # one setting, one place: the tray and the app inside WSL both read essaim's policy.idle_minutes
    $essaim = "$linuxData/venv/bin/essaim"
    if ($DryRun) {
        Say "would run essaim config set policy.idle_minutes $IdleMinutes inside $Distro"
    } else {
        Say "essaim trains after $IdleMinutes minutes without input (policy.idle_minutes)"
        $null = Invoke-Wsl -Arguments @('-d', $Distro, '--exec', $essaim, 'config', 'set', 'policy.idle_minutes',
            [string]$IdleMinutes) -TimeoutSeconds 120
    }
}

New-Folder $InstallDir
$settings = [ordered]@{
    distro                  = $Distro
    linuxDataDir            = $linuxData
    linuxStateDir           = $linuxState
    distroInstalledByEssaim = $script:DistroInstalled
}
Set-FileBytes $SettingsFile ([System.Text.Encoding]::UTF8.GetBytes(($settings | ConvertTo-Json) + "`r`n"))
Copy-Asset (Join-Path $PSScriptRoot 'essaim-tray.ps1') (Join-Path $InstallDir 'essaim-tray.ps1')
Copy-Asset (Join-Path $PSScriptRoot 'uninstall.ps1') (Join-Path $InstallDir 'uninstall.ps1')
$icon = Join-Path $InstallDir 'essaim.ico'
Copy-Asset (Join-Path $PSScriptRoot '..\assets\essaim.ico') $icon

$trayArguments = '-NoProfile -ExecutionPolicy Bypass -WindowStyle Hidden -File "' + (Join-Path $InstallDir 'essaim-tray.ps1') + '"'
Set-Shortcut $MenuLink $trayArguments $icon
Set-Shortcut $StartupLink $trayArguments $icon
Write-Manifest

if (-not $NoStart -and -not $DryRun) {
    if (Test-TrayRunning) {
        Say 'the essaim tray is running: quit it from its menu and start essaim from the Start menu to use this version'
    } else {
        Say 'starting the essaim tray (look for its icon in the notification area)'
        Start-Process -FilePath $PowerShellExe -ArgumentList $trayArguments -WindowStyle Hidden
    }
}
Say "done. essaim starts at each logon; remove it with: powershell -ExecutionPolicy Bypass -File `"$InstallDir\uninstall.ps1`" (-KeepData keeps your settings and identity)"
