//! The cookbooks converge for real: every step of a role, rendered by bake, runs in a Debian 12
//! root filesystem (a chroot) twice; both runs succeed and the second changes nothing. It needs
//! root, debootstrap and deb.debian.org; without them it says so and skips (`.ci/run` installs
//! debootstrap).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo, text};

/// The converge log and the kept root, or None when this machine cannot converge.
fn converge(role: &str, env: &str) -> Option<(String, PathBuf)> {
    let out = Command::new(repo().join("tests/converge/converge.sh"))
        .arg(env!("CARGO_BIN_EXE_bake"))
        .arg(repo())
        .arg(role)
        .arg(env)
        .env("BAKE_CONVERGE_KEEP", "1")
        .output()
        .expect("run tests/converge/converge.sh");
    let stdout = text(&out.stdout);
    if out.status.code() == Some(77) {
        eprintln!("converge skipped: {}", text(&out.stderr).trim());
        return None;
    }
    let kept = stdout.lines().rev().find_map(|l| l.strip_prefix("kept: ")).map(PathBuf::from);
    assert!(out.status.success(), "converge {role}/{env}:\n{stdout}\n{}", text(&out.stderr));
    Some((stdout, kept.expect("the converged root")))
}

fn release(root: &Path) {
    let _ = Command::new("umount").arg(root.join("proc")).status();
    if let Some(work) = root.parent() {
        let _ = std::fs::remove_dir_all(work);
    }
}

fn installed(root: &PathBuf, pkg: &str) -> bool {
    Command::new("chroot").arg(root).args(["dpkg-query", "-W", "-f=${Status}", pkg]).output().map(|o| text(&o.stdout).contains("ok installed")).unwrap_or(false)
}

#[test]
fn www_converges_twice_in_a_debian_chroot_and_the_second_run_changes_nothing() {
    let Some((log, root)) = converge("www", "staging") else { return };
    let read = |p: &str| std::fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap_or_default();
    let checks = [
        ("packages", ["docker.io", "chrony", "fail2ban", "nftables", "unattended-upgrades"].iter().all(|p| installed(&root, p))),
        ("daemon.json", read("/etc/docker/daemon.json").contains("\"data-root\": \"/mnt/docker\"")),
        ("firewall", read("/etc/nftables.conf").contains("tcp dport { 8000 } accept") && read("/etc/nftables.conf").contains("policy drop")),
        ("chrony", read("/etc/chrony/sources.d/bake.sources").contains("server 169.254.169.123 prefer iburst")),
        ("unit", read("/etc/systemd/system/django.service").contains("ExecStart=/usr/local/lib/bake/app-django start")),
        (
            "wrapper",
            read("/usr/local/lib/bake/app-django").contains("--publish 8000:8000") && read("/usr/local/lib/bake/app-django").contains("DJANGO_ENVIRON=STAGING"),
        ),
        // (a symlink to /etc/…, absolute inside the chroot: look at the link, not its target)
        ("enabled", root.join("etc/systemd/system/multi-user.target.wants/django.service").symlink_metadata().is_ok()),
        ("machine-id", read("/etc/machine-id").is_empty()),
    ];
    // bake's inventory step, run for real there: read in pages as bake reads it, it adds up to
    // what the machine wrote, and lists what the cookbooks installed.
    let sh = |lines: Vec<String>| {
        let o = Command::new("chroot").arg(&root).args(["bash", "-c", &lines.join("\n")]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    let (size, sha, first) = bake::inventory::first_page(&sh(bake::inventory::script())).unwrap();
    let mut doc = first.into_bytes();
    while doc.len() < size {
        let page = sh(bake::inventory::page_script(doc.len()));
        assert!(!page.is_empty());
        doc.extend_from_slice(page.as_bytes());
    }
    assert_eq!((doc.len(), bake::plan::sha256_hex(&doc)), (size, sha));
    let inv = bake::inventory::parse(&String::from_utf8(doc).unwrap()).unwrap();
    release(&root);
    assert!(inv.packages.len() > 100 && !inv.kernel.is_empty(), "{inv:?}");
    for p in ["docker.io", "chrony", "fail2ban", "dpkg", "libc6"] {
        assert_eq!(inv.versions(p).len(), 1, "{p} in the inventory");
    }
    let failed: Vec<&str> = checks.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    assert!(failed.is_empty(), "not as the cookbooks say: {failed:?}\n{log}");
    assert!(log.contains("converged www/staging: 14 steps, twice; the second run changed nothing"), "{log}");
}
