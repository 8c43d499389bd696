<#
.SYNOPSIS
    essaim's tray icon on Windows: runs `essaim run --headless` inside WSL2 and controls it.

.DESCRIPTION
    install.ps1 puts this script in %LOCALAPPDATA%\essaim with settings.json beside it, and starts it
    hidden at each logon (Startup folder) and from the Start menu. It
    - starts `essaim run --headless` in the WSL distribution, hidden, and restarts it with a growing
      delay when it exits;
    - pauses essaim while you use Windows and resumes it after policy.idle_minutes without keyboard or
      mouse input, and pauses it on battery unless policy.train_on_battery (then below
      policy.battery_min_percent): inside WSL essaim sees neither Windows' input nor its battery. These
      are essaim's own settings, read with `essaim config show` every minute, applied as essaim's
      policy applies them (client/policy.py); a power state Windows cannot tell is not battery;
    - shows essaim's state in the icon's tooltip (`essaim status --json`, every 15 s);
    - has a menu: Status, Pause, Pause for 1 hour, Resume, Only when idle, Finish and stop, Open logs,
      Quit. Only one tray runs per Windows session.
#>
param(
    [string]$Settings = (Join-Path $PSScriptRoot 'settings.json')
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
$env:WSL_UTF8 = '1'

$mutex = New-Object System.Threading.Mutex($false, 'Local\essaim-tray')
if (-not $mutex.WaitOne(0)) { exit 0 }

Add-Type -AssemblyName System.Windows.Forms
Add-Type -AssemblyName System.Drawing
Add-Type -TypeDefinition @'
using System;
using System.Runtime.InteropServices;
public static class EssaimUserIdle {
    [StructLayout(LayoutKind.Sequential)]
    private struct LASTINPUTINFO { public uint cbSize; public uint dwTime; }
    [DllImport("user32.dll")]
    private static extern bool GetLastInputInfo(ref LASTINPUTINFO info);
    // Seconds since the last keyboard or mouse input in this Windows session.
    public static double Seconds() {
        LASTINPUTINFO info = new LASTINPUTINFO();
        info.cbSize = (uint)Marshal.SizeOf(typeof(LASTINPUTINFO));
        if (!GetLastInputInfo(ref info)) { return 0; }
        return unchecked((uint)Environment.TickCount - info.dwTime) / 1000.0;
    }
}
'@

$config = Get-Content -LiteralPath $Settings -Raw | ConvertFrom-Json
function Get-Setting([string]$Name, $Default) {
    $property = $config.PSObject.Properties[$Name]
    if ($property -and $null -ne $property.Value) { return $property.Value }
    return $Default
}
$Distro = Get-Setting 'distro' 'Ubuntu'
$LinuxData = Get-Setting 'linuxDataDir' '~/.local/share/essaim'
$LinuxState = Get-Setting 'linuxStateDir' '~/.local/state/essaim'
$Essaim = "$LinuxData/venv/bin/essaim"
$PolicyLine = '^(policy\.[a-z_]+) = ([^\s#]+)'   # a line of `essaim config show`: KEY = VALUE    # source

$script:App = $null             # the wsl.exe process running `essaim run --headless`
$script:RestartDelay = 15       # seconds before restarting a stopped app; doubles up to 10 min
$script:RestartAt = [DateTime]::MinValue
$script:AutoPaused = $null      # paused by this tray (you are active, or on battery); unknown at start,
$script:AutoReason = ''         # so that the first check says pause or resume either way
$script:UserPausedUntil = [DateTime]::MinValue   # paused from the menu: the idle check leaves it alone
$script:NextPolicyTry = [DateTime]::MinValue
$script:Policy = $null          # essaim's settings for the rules below (Read-Policy); none yet: no rule applied
$script:NextPolicyRead = [DateTime]::MinValue
$script:Stopping = $false

function ConvertTo-Argument([string]$Value) {
    if ($Value -and $Value -notmatch '[\s"]') { return $Value }
    $escaped = $Value -replace '(\\*)"', '$1$1\"'
    $escaped = $escaped -replace '(\\+)$', '$1$1'
    return '"' + $escaped + '"'
}

function Start-Wsl([string[]]$Arguments, [switch]$Capture) {
    # Starts wsl.exe without a window.
    $info = New-Object System.Diagnostics.ProcessStartInfo
    $info.FileName = 'wsl.exe'
    $info.Arguments = ($Arguments | ForEach-Object { ConvertTo-Argument $_ }) -join ' '
    $info.UseShellExecute = $false
    $info.CreateNoWindow = $true
    if ($Capture) {
        $info.RedirectStandardOutput = $true
        $info.RedirectStandardError = $true
        $info.StandardOutputEncoding = [System.Text.Encoding]::UTF8
        $info.StandardErrorEncoding = [System.Text.Encoding]::UTF8
    }
    return [System.Diagnostics.Process]::Start($info)
}

function Invoke-Essaim([string[]]$Arguments, [int]$TimeoutSeconds = 15) {
    # Runs `essaim ARGUMENTS` inside WSL; returns @{ Code; Output } (Code -1: no answer in time).
    $process = Start-Wsl -Arguments (@('-d', $Distro, '--exec', $Essaim) + $Arguments) -Capture
    $stdout = $process.StandardOutput.ReadToEndAsync()
    $stderr = $process.StandardError.ReadToEndAsync()
    if (-not $process.WaitForExit($TimeoutSeconds * 1000)) {
        try { $process.Kill() } catch { }
        return [pscustomobject]@{ Code = -1; Output = "essaim $($Arguments -join ' ') did not answer within $TimeoutSeconds s" }
    }
    $process.WaitForExit()
    return [pscustomobject]@{ Code = $process.ExitCode; Output = (($stdout.Result + $stderr.Result) -replace "`0", '').Trim() }
}

function Start-App {
    $script:App = Start-Wsl -Arguments @('-d', $Distro, '--cd', '~', '--exec', $Essaim, 'run', '--headless')
}

function Stop-App {
    if (-not $script:App -or $script:App.HasExited) { return }
    $null = Start-Wsl -Arguments @('-d', $Distro, '--exec', 'pkill', '-TERM', '-f', "$Essaim run --headless")
    if (-not $script:App.WaitForExit(15000)) {
        try { $script:App.Kill() } catch { }
    }
}

function Show-Tip([string]$Text) {
    if ($Text.Length -gt 63) { $Text = $Text.Substring(0, 60) + '...' }  # NotifyIcon's limit
    $tray.Text = $Text
}

function Show-Error([string]$Text) {
    $tray.ShowBalloonTip(5000, 'essaim', $Text, [System.Windows.Forms.ToolTipIcon]::Warning)
}

function Read-Policy {
    # Reads policy.idle_minutes, policy.only_when_idle, policy.train_on_battery and
    # policy.battery_min_percent as essaim itself sees them (its config file, environment and
    # defaults); $false when essaim does not answer.
    $result = Invoke-Essaim @('config', 'show') 15
    if ($result.Code -ne 0) { return $false }
    $values = @{}
    foreach ($line in ($result.Output -split "`r?`n")) {
        if ($line -match $PolicyLine) { $values[$Matches[1]] = $Matches[2] }
    }
    foreach ($key in @('policy.idle_minutes', 'policy.only_when_idle', 'policy.train_on_battery', 'policy.battery_min_percent')) {
        if (-not $values.ContainsKey($key)) { return $false }
    }
    $invariant = [System.Globalization.CultureInfo]::InvariantCulture
    $script:Policy = [pscustomobject]@{
        IdleSeconds       = 60 * [double]::Parse($values['policy.idle_minutes'], $invariant)
        OnlyWhenIdle      = $values['policy.only_when_idle'] -eq 'true'
        TrainOnBattery    = $values['policy.train_on_battery'] -eq 'true'
        BatteryMinPercent = [double]::Parse($values['policy.battery_min_percent'], $invariant)
    }
    $onlyWhenIdle.Checked = $script:Policy.OnlyWhenIdle
    return $true
}

function Get-BatteryReason {
    # essaim's battery rule: on battery, pause unless policy.train_on_battery, and then only below
    # policy.battery_min_percent. A power state or a charge that Windows cannot tell does not pause.
    $power = [System.Windows.Forms.SystemInformation]::PowerStatus
    if ($power.PowerLineStatus -ne [System.Windows.Forms.PowerLineStatus]::Offline) { return '' }
    if (-not $script:Policy.TrainOnBattery) { return 'on battery' }
    $percent = 100 * $power.BatteryLifePercent   # BatteryLifePercent: 0 to 1, above 1 when unknown
    if ($percent -ge 0 -and $percent -le 100 -and $percent -lt $script:Policy.BatteryMinPercent) {
        return "battery at $([Math]::Round($percent))% (minimum $($script:Policy.BatteryMinPercent)%)"
    }
    return ''
}

function Update-Policy {
    # Pauses essaim while you use Windows or run on battery, by essaim's own settings; resumes it when
    # you are away.
    if ([DateTime]::Now -ge $script:NextPolicyRead) {
        $script:NextPolicyRead = [DateTime]::Now.AddSeconds(10)
        if (Read-Policy) { $script:NextPolicyRead = [DateTime]::Now.AddSeconds(60) }
    }
    if (-not $script:Policy) { return }
    if ([DateTime]::Now -lt $script:UserPausedUntil -or [DateTime]::Now -lt $script:NextPolicyTry) { return }
    $reason = Get-BatteryReason
    if (-not $reason -and $script:Policy.OnlyWhenIdle -and [EssaimUserIdle]::Seconds() -lt $script:Policy.IdleSeconds) {
        $reason = 'you are using this computer'
    }
    if ($reason -and $script:AutoPaused -ne $true) {
        $result = Invoke-Essaim @('pause') 10
        if ($result.Code -eq 0) {
            $script:AutoPaused = $true
            $script:AutoReason = $reason
            Show-Tip "essaim: paused ($reason)"
        } else { $script:NextPolicyTry = [DateTime]::Now.AddSeconds(10) }
    } elseif (-not $reason -and $script:AutoPaused -ne $false) {
        $result = Invoke-Essaim @('resume') 10
        if ($result.Code -eq 0) {
            $script:AutoPaused = $false
            $script:AutoReason = ''
        } else { $script:NextPolicyTry = [DateTime]::Now.AddSeconds(10) }
    } elseif ($reason) {
        $script:AutoReason = $reason   # still paused, for another reason now
    }
}

function Update-Status {
    # Keeps the app running and shows its state in the tooltip.
    if (-not $script:App -or $script:App.HasExited) {
        if ($script:RestartAt -eq [DateTime]::MinValue) {
            $script:RestartAt = [DateTime]::Now.AddSeconds($script:RestartDelay)
            Show-Tip "essaim: stopped, restarting in $($script:RestartDelay) s"
        } elseif ([DateTime]::Now -ge $script:RestartAt) {
            $script:RestartAt = [DateTime]::MinValue
            $script:RestartDelay = [Math]::Min(600, 2 * $script:RestartDelay)
            Start-App
        }
        return
    }
    $result = Invoke-Essaim @('status', '--json') 10
    if ($result.Code -ne 0) {
        Show-Tip 'essaim: starting...'
        return
    }
    $script:RestartDelay = 15
    try {
        $status = $result.Output | ConvertFrom-Json
        $state = [string]$status.PSObject.Properties['state'].Value
        $why = $status.PSObject.Properties['reason']
        if ($script:AutoPaused -and $script:AutoReason) { Show-Tip "essaim: paused ($($script:AutoReason))" }
        elseif ($why -and $why.Value) { Show-Tip "essaim: $state ($($why.Value))" }
        else { Show-Tip "essaim: $state" }
    } catch {
        Show-Tip 'essaim: running'
    }
}

function Invoke-Safely([scriptblock]$Action) {
    try { & $Action } catch { Show-Error $_.Exception.Message }
}

function Invoke-MenuCommand([string[]]$Arguments) {
    $result = Invoke-Essaim $Arguments 30
    if ($result.Code -ne 0) { Show-Error $result.Output }
}

# --- the icon and its menu ------------------------------------------------------------------------
$tray = New-Object System.Windows.Forms.NotifyIcon
$iconFile = Join-Path $PSScriptRoot 'essaim.ico'
if (Test-Path -LiteralPath $iconFile) { $tray.Icon = New-Object System.Drawing.Icon $iconFile }
else { $tray.Icon = [System.Drawing.SystemIcons]::Application }
$tray.Text = 'essaim: starting...'
$menu = New-Object System.Windows.Forms.ContextMenuStrip

$statusItem = $menu.Items.Add('Status...')
$statusItem.add_Click({ Invoke-Safely {
    $result = Invoke-Essaim @('status') 30
    [System.Windows.Forms.MessageBox]::Show($result.Output, 'essaim status') | Out-Null
} })
$null = $menu.Items.Add((New-Object System.Windows.Forms.ToolStripSeparator))
$pauseItem = $menu.Items.Add('Pause')
$pauseItem.add_Click({ Invoke-Safely {
    Invoke-MenuCommand @('pause')
    $script:UserPausedUntil = [DateTime]::MaxValue
} })
$pauseHourItem = $menu.Items.Add('Pause for 1 hour')
$pauseHourItem.add_Click({ Invoke-Safely {
    Invoke-MenuCommand @('pause', '--for', '1h')
    $script:UserPausedUntil = [DateTime]::Now.AddHours(1)
} })
$resumeItem = $menu.Items.Add('Resume')
$resumeItem.add_Click({ Invoke-Safely {
    Invoke-MenuCommand @('resume')
    $script:UserPausedUntil = [DateTime]::MinValue
    $script:AutoPaused = $false
} })
$onlyWhenIdle = New-Object System.Windows.Forms.ToolStripMenuItem('Only when idle')
$onlyWhenIdle.Checked = $true   # essaim's policy.only_when_idle, once read (Read-Policy)
$onlyWhenIdle.add_Click({ Invoke-Safely {
    $wanted = -not $onlyWhenIdle.Checked
    Invoke-MenuCommand @('config', 'set', 'policy.only_when_idle', $(if ($wanted) { 'true' } else { 'false' }))
    $script:NextPolicyRead = [DateTime]::MinValue   # read it back from essaim at the next tick
} })
$null = $menu.Items.Add($onlyWhenIdle)
$finishItem = $menu.Items.Add('Finish and stop')
$finishItem.add_Click({ Invoke-Safely { Invoke-MenuCommand @('finish') } })
$null = $menu.Items.Add((New-Object System.Windows.Forms.ToolStripSeparator))
$logsItem = $menu.Items.Add('Open logs')
$logsItem.add_Click({ Invoke-Safely {
    $folder = '\\wsl.localhost\' + $Distro + ($LinuxState -replace '/', '\')
    Start-Process -FilePath 'explorer.exe' -ArgumentList $folder
} })
$quitItem = $menu.Items.Add('Quit')
$quitItem.add_Click({ Invoke-Safely {
    $script:Stopping = $true
    $timer.Stop()
    $tray.Visible = $false
    Stop-App
    [System.Windows.Forms.Application]::Exit()
} })
$tray.ContextMenuStrip = $menu
$tray.add_DoubleClick({ Invoke-Safely { $statusItem.PerformClick() } })
$tray.Visible = $true

# --- the loop: the idle check every second, the status every 15 s ----------------------------------
$script:Ticks = 0
$timer = New-Object System.Windows.Forms.Timer
$timer.Interval = 1000
$timer.add_Tick({ Invoke-Safely {
    if ($script:Stopping) { return }
    if ($script:App -and -not $script:App.HasExited) { Update-Policy }
    if ($script:Ticks % 15 -eq 0) { Update-Status }
    $script:Ticks++
} })

Start-App
$timer.Start()
try {
    [System.Windows.Forms.Application]::Run()
} finally {
    $tray.Visible = $false
    $tray.Dispose()
    Stop-App
    $mutex.ReleaseMutex()
}
