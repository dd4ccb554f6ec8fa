#!/usr/bin/env python3
"""Generate the bundled demo dataset: edge-device log triage into a fixed JSON schema.

    python scripts/make_demo_data.py [--out FILE]   # default: edgetune/datasets/device_logs.jsonl

Each example is a chat: a fixed system prompt, a user turn holding a raw log excerpt (syslog,
journald, Android-style logcat, kernel, JSON app logs) or a field technician's message, and an
assistant turn holding one JSON object:

    {"device": ..., "component": ..., "severity": ..., "code": ..., "action": ...}

What the model must learn is what people fine-tune small models for: a strict output format, a
closed vocabulary (device types, components, actions), normalisation (a dozen ways of writing a
log level map to four severities) and extraction (the vendor error code, or null). The generator
is seeded, so the file is reproducible byte for byte.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20261128
N_EXAMPLES = 900
OUT = Path(__file__).resolve().parent.parent / "edgetune" / "datasets" / "device_logs.jsonl"

SYSTEM = (
    "You triage logs from a fleet of edge devices. Reply with one JSON object with the keys "
    "device, component, severity, code and action, and nothing else."
)

# device type -> hostname stems and the words a technician uses for it
DEVICES = {
    "router": (["rtr", "edge-rtr", "cpe"], ["router", "the CPE", "our edge router"]),
    "camera": (["cam", "ipcam", "nvr-cam"], ["camera", "the IP camera", "security cam"]),
    "thermostat": (
        ["thermo", "hvac-tstat", "tstat"],
        ["thermostat", "the HVAC controller", "smart thermostat"],
    ),
    "pos_terminal": (["pos", "till", "pay-term"], ["POS terminal", "the till", "card terminal"]),
    "solar_inverter": (["inv", "pv-inv", "solar-inv"], ["inverter", "the PV inverter", "solar inverter"]),
    "plc": (["plc", "ctrl-plc", "line-plc"], ["PLC", "the line controller", "PLC cabinet"]),
    "smart_lock": (["lock", "door-lock", "acs-lock"], ["smart lock", "the door lock", "access lock"]),
    "printer": (["prn", "label-prn", "printer"], ["label printer", "the printer", "receipt printer"]),
    "gateway": (["gw", "iot-gw", "lora-gw"], ["gateway", "the IoT gateway", "LoRa gateway"]),
}
SITES = [
    "berlin",
    "lyon",
    "austin",
    "osaka",
    "leeds",
    "porto",
    "store114",
    "wh3",
    "dock2",
    "lab",
    "hq",
    "plant7",
    "north",
    "roof",
    "lobby",
    "bay4",
    "line2",
    "kiosk9",
    "campus",
    "depot",
]

# problem -> (component, action, log messages, technician phrasings). {n} a number, {x} a hex word.
PROBLEMS = [
    (
        "network",
        "check_network",
        [
            "link down on eth{d}",
            "wan0: carrier lost",
            "dhcp lease renewal failed on wlan0",
            "ping to gateway 10.{d}.{d}.1 timed out after {n} attempts",
            "dns resolution failed for api.fleet.local",
        ],
        [
            "keeps dropping off the network",
            "lost its uplink again",
            "can't reach the cloud since this morning",
        ],
    ),
    (
        "network",
        "check_network",
        [
            "wifi: deauthenticated from AP reason={d}",
            "mqtt: connection refused, retry in {n}s",
            "tls handshake with broker timed out",
        ],
        ["shows offline on the dashboard", "wifi connection flaps every few minutes"],
    ),
    (
        "auth",
        "reset_credentials",
        [
            "auth: invalid client certificate for device id {x}",
            "login failed for user admin from 10.{d}.{d}.{d}",
            "token refresh rejected: 401 unauthorized",
            "ssh: {n} failed password attempts",
        ],
        [
            "rejects the admin password",
            "says its certificate is not valid",
            "won't authenticate with the portal",
        ],
    ),
    (
        "firmware",
        "update_firmware",
        [
            "ota: image signature verification failed",
            "fw: checksum mismatch in partition b",
            "bootloader: falling back to slot a after {n} failed boots",
            "firmware {d}.{d}.{d} is end of support",
        ],
        [
            "failed the firmware update overnight",
            "is stuck on an old firmware",
            "boots into the recovery image",
        ],
    ),
    (
        "battery",
        "replace_part",
        [
            "battery: cell voltage {d}.{d}V below cutoff",
            "bms: swelling detected on pack {d}",
            "battery health {n}% below threshold",
            "ups: battery self-test failed",
        ],
        ["battery dies within an hour", "battery pack looks swollen", "won't hold a charge anymore"],
    ),
    (
        "sensor",
        "recalibrate",
        [
            "temp sensor drift {d}.{d}C vs reference",
            "humidity reading out of range: {n}%",
            "pressure sensor offset exceeds tolerance",
            "imu: gyro bias unstable",
        ],
        [
            "reads the temperature {d} degrees too high",
            "sensor values jump around",
            "humidity readings look wrong",
        ],
    ),
    (
        "sensor",
        "replace_part",
        [
            "sensor bus: no ACK from address 0x{x}",
            "i2c{d}: device not responding",
            "adc channel {d} stuck at 0",
        ],
        ["one of the sensors reads zero all the time", "sensor stopped reporting entirely"],
    ),
    (
        "storage",
        "clear_storage",
        [
            "disk /data {n}% full",
            "no space left on device while writing /var/log/app.log",
            "sqlite: database or disk is full",
            "recording paused: storage quota exceeded",
        ],
        ["says storage is full", "stopped recording, disk full", "can't save logs anymore"],
    ),
    (
        "storage",
        "replace_part",
        [
            "mmcblk0: I/O error, sector {n}",
            "ext4-fs error: bad block bitmap",
            "sd card removed unexpectedly",
            "smart: reallocated sector count {n}",
        ],
        ["SD card keeps corrupting", "throws disk read errors"],
    ),
    (
        "thermal",
        "inspect_cooling",
        [
            "cpu temperature {n}C above limit, throttling",
            "fan{d}: speed 0 rpm, expected > 1200",
            "thermal zone {d} tripped at {n}C",
            "enclosure temperature critical",
        ],
        ["runs very hot and slows down", "fan is not spinning", "overheats in the afternoon"],
    ),
    (
        "power",
        "check_power",
        [
            "brownout detected: vin {d}.{d}V",
            "psu: input voltage out of range",
            "unexpected reboot, reset reason: power-on",
            "poe: port {d} power budget exceeded",
        ],
        [
            "reboots whenever the compressor starts",
            "loses power randomly",
            "turns off when other equipment starts up",
        ],
    ),
    (
        "display",
        "replace_part",
        ["lcd: panel not detected", "touch controller reset timeout", "backlight driver fault"],
        ["screen stays black", "touchscreen doesn't respond"],
    ),
    (
        "firmware",
        "restart_service",
        [
            "watchdog: service telemetryd not responding for {n}s",
            "app crashed with signal 11, restarting",
            "daemon scheduler exited with status {d}",
        ],
        ["telemetry stopped but the device is up", "the app keeps crashing"],
    ),
    (
        "system",
        "none",
        [
            "scheduled maintenance window started",
            "config reloaded by operator",
            "heartbeat ok, uptime {n}h",
            "nightly backup completed in {n}s",
        ],
        ["just checking in, everything looks normal", "routine reboot after maintenance, no issues"],
    ),
]

# how different log styles spell each severity
LEVEL_SPELLINGS = {
    "info": ["INFO", "info", "I", "<6>", "notice", "NOTICE", "<5>"],
    "warning": ["WARN", "WARNING", "warn", "W", "<4>"],
    "error": ["ERROR", "ERR", "err", "E", "<3>"],
    "critical": ["CRIT", "FATAL", "crit", "F", "<2>", "EMERG", "<0>", "ALERT"],
}
URGENCY = {
    "info": ["FYI:", "No rush,", "Low priority:"],
    "warning": ["Heads up,", "Not urgent yet, but", "Please check when you can:"],
    "error": ["Problem:", "Ticket:", "Need help,"],
    "critical": ["URGENT:", "Site down!", "Critical, customers affected:"],
}
PROBLEM_SEVERITIES = ["warning", "error", "error", "critical"]
CODE_FORMATS = ["E{n4}", "ERR-{n3}", "0x{h8}", "W{n4}", "EC{n2}-{n2}", "F{n3}"]
NOISE = [
    "systemd[1]: Started Session {n} of user root.",
    "kernel: random: crng init done",
    "sshd[{pid}]: Connection closed by 10.0.{d}.{d}",
    "ntpd[{pid}]: time synced, offset 0.00{d}s",
    "cron[{pid}]: (root) CMD (logrotate /etc/logrotate.conf)",
    "app[{pid}]: heartbeat ok",
    "dhcpcd[{pid}]: eth0: leased 10.1.{d}.{d} for 86400 seconds",
]


def fill(rng: random.Random, text: str) -> str:
    out = text
    while "{" in out:
        for key, make in (
            ("{n}", lambda: str(rng.randint(3, 98))),
            ("{d}", lambda: str(rng.randint(0, 9))),
            ("{x}", lambda: f"{rng.randint(16, 255):02x}"),
            ("{pid}", lambda: str(rng.randint(200, 32000))),
        ):
            if key in out:
                out = out.replace(key, make(), 1)
                break
        else:
            break
    return out


def make_code(rng: random.Random) -> str:
    fmt = rng.choice(CODE_FORMATS)
    return (
        fmt.replace("{n4}", f"{rng.randint(1000, 9999)}")
        .replace("{n3}", f"{rng.randint(100, 999)}")
        .replace("{h8}", f"{rng.randint(0, 0xFFFFFFFF):08X}")
        .replace("{n2}", f"{rng.randint(10, 99)}", 1)
        .replace("{n2}", f"{rng.randint(10, 99)}")
    )


def timestamp(rng: random.Random, style: str) -> str:
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    h, m, s = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    if style == "iso":
        return f"2026-{month:02d}-{day:02d}T{h:02d}:{m:02d}:{s:02d}.{rng.randint(0, 999):03d}Z"
    if style == "syslog":
        names = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
        return f"{names[month - 1]} {day:2d} {h:02d}:{m:02d}:{s:02d}"
    return f"[{rng.randint(1, 99999)}.{rng.randint(0, 999999):06d}]"


def log_line(rng, host, level, message, code) -> str:
    msg = (
        f"{message} ({code})" if code and rng.random() < 0.5 else (f"{code}: {message}" if code else message)
    )
    style = rng.choice(["syslog", "iso", "logcat", "kernel", "json", "kv"])
    proc = rng.choice(["fleetd", "agent", "netmgr", "hwmon", "updater", "appd", "sensord"])
    spelled = rng.choice(LEVEL_SPELLINGS[level])
    if style == "syslog":
        return f"{timestamp(rng, 'syslog')} {host} {proc}[{rng.randint(100, 9999)}]: {spelled.strip('<>') if spelled.startswith('<') else spelled}: {msg}"
    if style == "iso":
        return f"{timestamp(rng, 'iso')} {spelled.upper():<5} [{host}] {proc}: {msg}"
    if style == "logcat":
        letter = {"info": "I", "warning": "W", "error": "E", "critical": "F"}[level]
        return f"{timestamp(rng, 'iso')[5:19].replace('T', ' ')} {rng.randint(100, 9999)} {letter}/{proc}: {msg} host={host}"
    if style == "kernel":
        prio = {"info": "<6>", "warning": "<4>", "error": "<3>", "critical": rng.choice(["<2>", "<0>"])}[
            level
        ]
        return f"{prio}{timestamp(rng, 'kernel')} {host}: {msg}"
    if style == "json":
        record = {
            "ts": timestamp(rng, "iso"),
            "host": host,
            "level": spelled.strip("<>") if not spelled.startswith("<") else level,
            "msg": message,
        }
        if code:
            record["code"] = code
        return json.dumps(record)
    return (
        f'ts={timestamp(rng, "iso")} host={host} level={spelled.lower().strip("<>") if not spelled.startswith("<") else level} msg="{message}"'
        + (f" err={code}" if code else "")
    )


def example(rng: random.Random) -> dict:
    device = rng.choice(list(DEVICES))
    stems, words = DEVICES[device]
    component, action, messages, phrasings = rng.choice(PROBLEMS)
    severity = "info" if action == "none" else rng.choice(PROBLEM_SEVERITIES)
    code = make_code(rng) if action != "none" and rng.random() < 0.6 else None
    host = f"{rng.choice(stems)}-{rng.choice(SITES)}-{rng.randint(1, 40):02d}"
    if rng.random() < 0.72:  # a raw log excerpt, with unrelated lines around the one that matters
        lines = [log_line(rng, host, severity, fill(rng, rng.choice(messages)), code)]
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            noise = fill(rng, rng.choice(NOISE))
            lines.insert(rng.randint(0, len(lines)), f"{timestamp(rng, 'syslog')} {host} {noise}")
        user = "\n".join(lines)
    else:  # a technician's message
        opener = rng.choice(URGENCY[severity])
        where = rng.choice(["at " + rng.choice(SITES), f"({host})", "on site " + rng.choice(SITES), ""])
        word = rng.choice(words)
        subject = word if word.startswith(("the ", "our ")) else f"the {word}"
        text = f"{opener} {subject} {where} {fill(rng, rng.choice(phrasings))}".replace("  ", " ")
        if code:
            text += rng.choice([f". Display shows {code}.", f", error code {code}.", f". It logged {code}."])
        else:
            text += rng.choice([".", ", no error code shown.", ". Any idea?"])
        user = text[0].upper() + text[1:]
    answer = {"device": device, "component": component, "severity": severity, "code": code, "action": action}
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user},
            {"role": "assistant", "content": json.dumps(answer)},
        ]
    }


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    out = parser.parse_args().out
    rng = random.Random(SEED)
    rows, seen = [], set()
    while len(rows) < N_EXAMPLES:
        ex = example(rng)
        key = ex["messages"][1]["content"]
        if key not in seen:
            seen.add(key)
            rows.append(ex)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} examples to {out}")


if __name__ == "__main__":
    main()
