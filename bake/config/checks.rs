//! What a cookbook attribute must be to keep its meaning, declared in the cookbook's `[checks]`
//! (`attribute path = "kind"`) and checked in plan and validate, before any AWS call: a package
//! name that is not an apt option, a unit name that is not a system's or bake's, a data folder
//! that is not a system folder, environment names, volume specs, container commands.
//! The step scripts check again where they can (defence in depth); these are the clear,
//! early errors naming the file and key that set the value.

use serde_json::Value as Json;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A package name or a list of them: Debian policy 5.6.1 (lowercase letters, digits, `+ - .`,
    /// at least two, starting with a letter or digit), optionally `:arch`, `=version` or `/release`.
    DebianPackages,
    /// A systemd unit (and container) name bake writes: `[a-z0-9][a-z0-9_.-]{0,62}`, not a unit of
    /// the system or of bake (`bake-*`).
    UnitName,
    /// An absolute folder a service owns (chmod'ed, filled): not a system folder.
    DataDir,
    /// A table of environment variables: names `[A-Za-z_][A-Za-z0-9_]*`, values text, numbers or
    /// booleans.
    EnvNames,
    /// Docker volume specs `SOURCE:TARGET[:OPTIONS]`: SOURCE an absolute path or a volume name,
    /// TARGET absolute, OPTIONS Docker's.
    Volumes,
    /// A container command: a list of words passed as they are (newlines included), or one
    /// string split at white space (spaces, tabs, newlines).
    Command,
    /// One of the listed words (`one-of:web,worker`).
    OneOf(Vec<String>),
    /// A whole number of seconds (or a count), 0 or more.
    Seconds,
    /// A TCP/UDP port, 1-65535.
    Port,
    /// A container image reference without its tag: `[registry[:port]/]name[/name…]`, lowercase.
    DockerImage,
    /// A container image tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    DockerTag,
    /// A systemd calendar (OnCalendar), or empty: one line of its characters.
    Calendar,
    /// A time of day, `HH:MM`.
    TimeOfDay,
    /// A short duration as fail2ban and others take it: digits and an optional unit (s m h d w).
    ShortDuration,
    /// Published ports: `[IP:]HOST:CONTAINER[/tcp|udp]` or `CONTAINER`.
    PortMappings,
}

pub const KINDS: &[(&str, Check)] = &[
    ("debian-packages", Check::DebianPackages),
    ("unit-name", Check::UnitName),
    ("data-dir", Check::DataDir),
    ("env-names", Check::EnvNames),
    ("volumes", Check::Volumes),
    ("command", Check::Command),
    ("seconds", Check::Seconds),
    ("port", Check::Port),
    ("docker-image", Check::DockerImage),
    ("docker-tag", Check::DockerTag),
    ("calendar", Check::Calendar),
    ("time-of-day", Check::TimeOfDay),
    ("short-duration", Check::ShortDuration),
    ("port-mappings", Check::PortMappings),
];

pub fn parse(kind: &str) -> Option<Check> {
    if let Some(words) = kind.strip_prefix("one-of:") {
        let ws: Vec<String> = words.split(',').map(|w| w.trim().to_string()).collect();
        return (!ws.iter().any(String::is_empty)).then_some(Check::OneOf(ws));
    }
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, c)| c.clone())
}

fn whole(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64(),
        Json::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    }
}

fn port_number(s: &str) -> bool {
    s.parse::<u32>().map(|p| (1..=65535).contains(&p)).unwrap_or(false) && !s.starts_with('0')
}

/// Units of a Debian or Ubuntu system (and of the SSM agent and Docker) an app may not replace.
const SYSTEM_UNITS: &[&str] = &[
    "apparmor",
    "apt-daily",
    "apt-daily-upgrade",
    "auditd",
    "chrony",
    "chronyd",
    "cloud-config",
    "cloud-final",
    "cloud-init",
    "cloud-init-local",
    "containerd",
    "cron",
    "dbus",
    "docker",
    "emergency",
    "fail2ban",
    "getty",
    "networking",
    "nftables",
    "polkit",
    "rescue",
    "rsyslog",
    "snapd",
    "ssh",
    "sshd",
    "sudo",
    "ufw",
    "unattended-upgrades",
    "user",
    "amazon-ssm-agent",
    "ec2-instance-connect",
    "multipathd",
    "iptables",
    "netfilter-persistent",
    "atd",
    "logrotate",
    "man-db",
];

/// Folders of the system a service must not take over (exactly these).
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/tmp",
    "/var/cache",
    "/var/spool",
    "/var/run",
    "/var/mail",
    "/var/backups",
    "/var/local",
    "/var/opt",
];

/// Folders nothing below which a service may own.
const SYSTEM_TREES: &[&str] = &["/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run", "/sbin", "/sys", "/usr"];

pub fn debian_package(p: &str) -> bool {
    let (name, rest) = match p.find([':', '=', '/']) {
        Some(i) => (&p[..i], Some(&p[i..])),
        None => (p, None),
    };
    let name_ok = name.len() >= 2
        && (name.as_bytes()[0].is_ascii_lowercase() || name.as_bytes()[0].is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b));
    let rest_ok = match rest {
        None => true,
        Some(r) => {
            let (sep, tail) = r.split_at(1);
            !tail.is_empty()
                && match sep {
                    ":" => tail.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "=" => tail.as_bytes()[0].is_ascii_digit() && tail.bytes().all(|b| b.is_ascii_alphanumeric() || b".+~:-".contains(&b)),
                    _ => tail.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-".contains(&b)),
                }
        }
    };
    name_ok && rest_ok
}

fn normal_absolute(p: &str) -> bool {
    p.starts_with('/') && (p == "/" || (!p.ends_with('/') && !p.contains("//") && !p.split('/').any(|s| s == "." || s == "..")))
}

fn text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn shown(s: &str) -> String {
    s.chars().take(80).collect::<String>().escape_default().to_string()
}

/// The first problem with `v` as `check` wants it: (where below the attribute, `[2]` or `.KEY`
/// or ``, why).
pub fn problem(check: &Check, v: &Json) -> Option<(String, String)> {
    match check {
        Check::DebianPackages => {
            let items: Vec<(String, &Json)> = match v {
                Json::Array(a) => a.iter().enumerate().map(|(i, x)| (format!("[{i}]"), x)).collect(),
                other => vec![(String::new(), other)],
            };
            for (at, x) in items {
                match x.as_str() {
                    Some(p) if debian_package(p) => {}
                    Some(p) => {
                        let why = if p.starts_with('-') { " (it would reach apt as an option)" } else { "" };
                        return Some((at, format!("`{}` is not a Debian package name{why}: lowercase letters, digits, + - . (Debian policy 5.6.1), optionally :arch, =version or /release", shown(p))));
                    }
                    None => return Some((at, "a package name is text".into())),
                }
            }
            None
        }
        Check::UnitName => {
            let Some(n) = v.as_str() else { return Some((String::new(), "a unit name is text".into())) };
            let shape = !n.is_empty()
                && n.len() <= 63
                && (n.as_bytes()[0].is_ascii_lowercase() || n.as_bytes()[0].is_ascii_digit())
                && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
            if !shape {
                return Some((String::new(), format!("`{}` is not a unit name: 1-63 of a-z, 0-9, _ . -, starting with a letter or digit", shown(n))));
            }
            if n == "bake" || n.starts_with("bake-") || n.starts_with("bake_") {
                return Some((String::new(), format!("`{n}` would take one of bake's own units (bake-*)")));
            }
            let base = n.strip_suffix(".service").unwrap_or(n);
            if SYSTEM_UNITS.contains(&base) || base.starts_with("systemd-") || base.starts_with("getty@") || base.starts_with("snap.") {
                return Some((String::new(), format!("`{n}` is a unit of the system; the app would replace {base}.service")));
            }
            None
        }
        Check::DataDir => {
            let Some(p) = v.as_str() else { return Some((String::new(), "a folder is text".into())) };
            if !normal_absolute(p) {
                return Some((String::new(), format!("`{}` is not an absolute, normal path (no . or .., no // or trailing /)", shown(p))));
            }
            if SYSTEM_DIRS.contains(&p) || SYSTEM_TREES.iter().any(|t| p.starts_with(&format!("{t}/"))) {
                return Some((String::new(), format!("`{p}` is a system folder: the service would own it (e.g. use /var/lib/<name> or /mnt/<name>)")));
            }
            None
        }
        Check::EnvNames => {
            let Json::Object(m) = v else { return Some((String::new(), "the environment is a table NAME = \"value\"".into())) };
            for (k, x) in m {
                let name_ok = !k.is_empty()
                    && (k.as_bytes()[0].is_ascii_alphabetic() || k.as_bytes()[0] == b'_')
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !name_ok {
                    return Some((format!(".{k}"), format!("`{}` is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)", shown(k))));
                }
                match text(x) {
                    Some(t) if t.contains('\0') => return Some((format!(".{k}"), "a value holds a NUL character".into())),
                    Some(_) => {}
                    None => return Some((format!(".{k}"), "a value is text, a number or a boolean".into())),
                }
            }
            None
        }
        Check::Volumes => {
            let Json::Array(a) = v else { return Some((String::new(), "volumes are a list of \"SOURCE:TARGET[:OPTIONS]\"".into())) };
            const OPTIONS: &[&str] =
                &["ro", "rw", "z", "Z", "shared", "rshared", "slave", "rslave", "private", "rprivate", "nocopy", "consistent", "cached", "delegated"];
            for (i, x) in a.iter().enumerate() {
                let at = format!("[{i}]");
                let Some(s) = x.as_str() else { return Some((at, "a volume is text".into())) };
                let parts: Vec<&str> = s.split(':').collect();
                let why = if !(2..=3).contains(&parts.len()) {
                    Some("is not SOURCE:TARGET[:OPTIONS]".to_string())
                } else if !(normal_absolute(parts[0])
                    || (parts[0].len() >= 2
                        && parts[0].as_bytes()[0].is_ascii_alphanumeric()
                        && parts[0].bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))))
                {
                    Some(format!("has source `{}`: an absolute path, or a volume name ([A-Za-z0-9][A-Za-z0-9_.-]+)", shown(parts[0])))
                } else if !normal_absolute(parts[1]) || parts[1] == "/" {
                    Some(format!("has target `{}`: an absolute path in the container", shown(parts[1])))
                } else if parts.len() == 3 && !parts[2].split(',').all(|o| OPTIONS.contains(&o)) {
                    Some(format!("has options `{}`: Docker's are {}", shown(parts[2]), OPTIONS.join(", ")))
                } else {
                    None
                };
                if let Some(why) = why {
                    return Some((at, format!("`{}` {why}", shown(s))));
                }
            }
            None
        }
        Check::OneOf(words) => match v.as_str() {
            Some(w) if words.iter().any(|x| x == w) => None,
            _ => Some((String::new(), format!("`{}` is not one of {}", shown(&text(v).unwrap_or_default()), words.join(", ")))),
        },
        Check::Seconds => match whole(v) {
            Some(n) if n >= 0 => None,
            _ => Some((String::new(), format!("`{}` is not a whole number, 0 or more", shown(&text(v).unwrap_or_default())))),
        },
        Check::Port => match whole(v) {
            Some(n) if (1..=65535).contains(&n) => None,
            _ => Some((String::new(), format!("`{}` is not a port (1-65535)", shown(&text(v).unwrap_or_default())))),
        },
        Check::DockerImage => {
            let s = v.as_str().unwrap_or_default();
            let ok = !s.is_empty()
                && s.len() <= 255
                && (s.as_bytes()[0].is_ascii_lowercase() || s.as_bytes()[0].is_ascii_digit())
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/:-".contains(&b))
                && !s.ends_with('/')
                && !s.contains("//");
            (!ok).then(|| (String::new(), format!("`{}` is not an image name (lowercase [registry[:port]/]name, without the tag)", shown(s))))
        }
        Check::DockerTag => {
            let s = v.as_str().unwrap_or_default();
            let ok = (1..=128).contains(&s.len())
                && (s.as_bytes()[0].is_ascii_alphanumeric() || s.as_bytes()[0] == b'_')
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            (!ok).then(|| (String::new(), format!("`{}` is not an image tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})", shown(s))))
        }
        Check::Calendar => {
            let s = v.as_str().unwrap_or_default();
            let ok = s.len() <= 256 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"*:/,.~- ".contains(&b)) && s.trim() == s;
            (!ok || v.as_str().is_none()).then(|| (String::new(), format!("`{}` is not a systemd calendar (e.g. daily, Mon *-*-* 04:00:00)", shown(s))))
        }
        Check::TimeOfDay => {
            let s = v.as_str().unwrap_or_default();
            let ok = s.len() == 5
                && s.as_bytes()[2] == b':'
                && s[..2].parse::<u32>().map(|h| h < 24).unwrap_or(false)
                && s[3..].parse::<u32>().map(|m| m < 60).unwrap_or(false);
            (!ok).then(|| (String::new(), format!("`{}` is not a time of day (HH:MM)", shown(s))))
        }
        Check::ShortDuration => {
            let s = text(v).unwrap_or_default();
            let digits = s.trim_end_matches(['s', 'm', 'h', 'd', 'w']);
            let ok = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && s.len() - digits.len() <= 1;
            (!ok).then(|| (String::new(), format!("`{}` is not a duration such as 10m or 1h", shown(&s))))
        }
        Check::PortMappings => {
            let Json::Array(a) = v else { return Some((String::new(), "published ports are a list".into())) };
            for (i, x) in a.iter().enumerate() {
                let s = text(x).unwrap_or_default();
                let (spec, proto) = s.split_once('/').map(|(a, b)| (a, Some(b))).unwrap_or((&s, None));
                let parts: Vec<&str> = spec.split(':').collect();
                let ports_ok = match parts.as_slice() {
                    [c] => port_number(c),
                    [h, c] => port_number(h) && port_number(c),
                    [ip, h, c] => ip.parse::<std::net::IpAddr>().is_ok() && (h.is_empty() || port_number(h)) && port_number(c),
                    _ => false,
                };
                if !ports_ok || !matches!(proto, None | Some("tcp") | Some("udp") | Some("sctp")) {
                    return Some((format!("[{i}]"), format!("`{}` is not a port mapping ([IP:]HOST:CONTAINER[/tcp|udp])", shown(&s))));
                }
            }
            None
        }
        Check::Command => {
            let words: Vec<(String, &Json)> = match v {
                Json::Array(a) => a.iter().enumerate().map(|(i, x)| (format!("[{i}]"), x)).collect(),
                Json::String(_) => vec![(String::new(), v)],
                _ => return Some((String::new(), "a command is a list of words or one string".into())),
            };
            for (at, x) in words {
                match x.as_str() {
                    Some(w) if w.contains('\0') => return Some((at, "holds a NUL character".into())),
                    Some(_) => {}
                    None => return Some((at, "a command's words are text".into())),
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn packages_are_names_not_options() {
        for ok in ["htop", "libssl3", "g++", "openssl=3.0.13-0ubuntu3.4", "libc6:amd64", "nginx/bookworm-backports", "7zip"] {
            assert!(debian_package(ok), "{ok}");
        }
        for bad in ["-oDPkg::Pre-Invoke::=touch /pwned", "a", "Htop", "htop ", "ht op", "htop=", "htop=abc", "x;rm", "", "--", "pkg:AMD64"] {
            assert!(!debian_package(bad), "{bad}");
        }
        let (at, why) = problem(&Check::DebianPackages, &json!(["htop", "-oDPkg::Pre-Invoke::=touch /pwned"])).unwrap();
        assert_eq!(at, "[1]");
        assert!(why.contains("would reach apt as an option"), "{why}");
    }

    #[test]
    fn units_folders_env_volumes_and_commands() {
        for bad in ["docker", "ssh", "bake-cleanup", "systemd-journald", "Docker", "a b", "", "sshd.service"] {
            assert!(problem(&Check::UnitName, &json!(bad)).is_some(), "{bad}");
        }
        assert!(problem(&Check::UnitName, &json!("boxoffice")).is_none());
        for bad in ["/etc", "/", "/usr/lib/x", "/var/lib", "relative", "/mnt/../etc", "/var//lib/docker", "/data/"] {
            assert!(problem(&Check::DataDir, &json!(bad)).is_some(), "{bad}");
        }
        for ok in ["/var/lib/docker", "/mnt/docker", "/data"] {
            assert!(problem(&Check::DataDir, &json!(ok)).is_none(), "{ok}");
        }
        assert_eq!(problem(&Check::EnvNames, &json!({"RAILS_ENV": "x", "FOO=BAR": "y"})).unwrap().0, ".FOO=BAR");
        assert!(problem(&Check::EnvNames, &json!({"PORT": 80, "DEBUG": true})).is_none());
        for bad in ["-m777:/y", "/x", "namedvol", "/a:relative", "/a:/b:rx", "a:/b"] {
            assert!(problem(&Check::Volumes, &json!([bad])).is_some(), "{bad}");
        }
        for ok in ["/var/log/containers:/var/log", "namedvol:/data", "/srv/x:/x:ro,z"] {
            assert!(problem(&Check::Volumes, &json!([ok])).is_none(), "{ok}");
        }
        assert!(problem(&Check::Command, &json!(["sh", "-c", "a\nb"])).is_none());
        assert!(problem(&Check::Command, &json!({"a": 1})).is_some());
    }

    #[test]
    fn words_numbers_names_and_times() {
        let oneof = parse("one-of:web,worker").unwrap();
        assert!(problem(&oneof, &json!("web")).is_none() && problem(&oneof, &json!("wrker")).is_some());
        assert!(parse("one-of:a,,b").is_none() && parse("nope").is_none());
        assert!(problem(&Check::Seconds, &json!(30)).is_none() && problem(&Check::Seconds, &json!(-1)).is_some());
        assert!(problem(&Check::Port, &json!(22)).is_none() && problem(&Check::Port, &json!(70000)).is_some());
        assert!(problem(&Check::DockerImage, &json!("registry.example.com:5000/team/app")).is_none());
        assert!(problem(&Check::DockerImage, &json!("Registry.example.com/Kaiju")).is_some());
        assert!(problem(&Check::DockerTag, &json!("v1.4.2")).is_none() && problem(&Check::DockerTag, &json!("v1 beta")).is_some());
        assert!(problem(&Check::Calendar, &json!("")).is_none() && problem(&Check::Calendar, &json!("Mon *-*-* 04:00:00")).is_none());
        assert!(problem(&Check::Calendar, &json!("daily\nhourly")).is_some());
        assert!(problem(&Check::TimeOfDay, &json!("04:00")).is_none() && problem(&Check::TimeOfDay, &json!("25:00")).is_some());
        assert!(problem(&Check::ShortDuration, &json!("10m")).is_none() && problem(&Check::ShortDuration, &json!("10 m")).is_some());
        assert!(problem(&Check::PortMappings, &json!(["80:3000", "127.0.0.1:8080:80/tcp", "9000"])).is_none());
        assert!(problem(&Check::PortMappings, &json!(["80:3000;rm"])).is_some());
    }
}
