//! What an image holds — its Debian packages, its kernel, the container images pulled onto it —
//! read from the builder as the last step of every bake and patch (pure here: the script, its
//! parsing, the digest; `stages::inventory` runs it), and the questions `bake audit` asks of it:
//! which images have a package below a version, compared by Debian's rules (the `debversion`
//! crate, as dpkg compares: epochs, `~` sorting before everything, digits as numbers).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The first line of the document the builder writes.
pub const HEADER: &str = "#bake-inventory v1";
/// Where the builder keeps the document while bake reads it in pages.
pub const PATH: &str = "/var/lib/bake/inventory.txt";
/// Bytes read per command: well under the 24,000 characters of standard output SSM keeps.
pub const PAGE: usize = 20_000;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Inventory {
    pub kernel: String,
    pub packages: Vec<Package>,
    pub containers: Vec<Container>,
}

/// The inventory step's script: writes the document to [`PATH`], prints `#size BYTES SHA256`, then
/// the first page. Later pages: [`page_script`].
pub fn script() -> Vec<String> {
    [
        "set -eu",
        "mkdir -p /var/lib/bake",
        "f=/var/lib/bake/inventory.txt",
        "{",
        "  echo '#bake-inventory v1'",
        "  echo \"#kernel $(uname -r)\"",
        "  echo '#packages'",
        // Installed (or held) packages only, not those removed with their configuration left.
        "  dpkg-query -W -f='${db:Status-Abbrev}${Package}\\t${Version}\\t${Architecture}\\n' | sed -n 's/^[hi]i //p' | LC_ALL=C sort",
        "  echo '#containers'",
        "  if command -v docker >/dev/null 2>&1; then docker image ls --digests --format '{{.Repository}}\\t{{.Tag}}\\t{{.Digest}}' | LC_ALL=C sort; fi",
        "} > \"$f.tmp\"",
        "mv \"$f.tmp\" \"$f\"",
        "echo \"#size $(wc -c < \"$f\") $(sha256sum \"$f\" | cut -d' ' -f1)\"",
        "head -c 20000 \"$f\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The command that prints the document's bytes from `offset` on, one page.
pub fn page_script(offset: usize) -> Vec<String> {
    vec![format!("tail -c +{} {PATH} | head -c {PAGE}", offset + 1)]
}

/// The first command's output: (size, sha256, the first page).
pub fn first_page(stdout: &str) -> Result<(usize, String, String), String> {
    let (line, rest) = stdout.split_once('\n').unwrap_or((stdout, ""));
    let mut it = line.split_whitespace();
    match (it.next(), it.next().and_then(|n| n.parse::<usize>().ok()), it.next()) {
        (Some("#size"), Some(n), Some(sha)) if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => Ok((n, sha.to_string(), rest.to_string())),
        _ => Err(format!("the inventory step printed `{}` where `#size BYTES SHA256` was expected", crate::error::one_line(line))),
    }
}

/// Parses the document the builder wrote.
pub fn parse(doc: &str) -> Result<Inventory, String> {
    let mut lines = doc.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("it does not start with `{HEADER}`"));
    }
    let mut inv = Inventory::default();
    let mut section = "";
    for (n, line) in lines.enumerate() {
        let at = n + 2;
        if let Some(k) = line.strip_prefix("#kernel ") {
            inv.kernel = k.trim().to_string();
            continue;
        }
        match line {
            "#packages" | "#containers" => {
                section = line;
                continue;
            }
            "" => continue,
            _ => {}
        }
        let f: Vec<&str> = line.split('\t').collect();
        match (section, f.as_slice()) {
            ("#packages", [name, version, arch]) => {
                if !crate::config::checks::debian_package(name) || Version::from_str(version).is_err() {
                    return Err(format!("line {at}: `{}` is not a package, a Debian version and an architecture", crate::error::one_line(line)));
                }
                inv.packages.push(Package { name: name.to_string(), version: version.to_string(), arch: arch.to_string() });
            }
            ("#containers", [repository, tag, digest]) => {
                inv.containers.push(Container { repository: repository.to_string(), tag: tag.to_string(), digest: digest.to_string() })
            }
            _ => return Err(format!("line {at}: `{}` is not what the inventory holds there", crate::error::one_line(line))),
        }
    }
    if inv.packages.is_empty() {
        return Err("it lists no Debian package (is dpkg on the image?)".into());
    }
    inv.packages.sort();
    Ok(inv)
}

impl Inventory {
    /// The digest bake tags the image with (`bake:inventory`): sha256 of the inventory's JSON.
    pub fn sha256(&self) -> String {
        crate::plan::sha256_hex(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }

    /// Every installed version of `package` (one per architecture).
    pub fn versions(&self, package: &str) -> Vec<&Package> {
        self.packages.iter().filter(|p| p.name == package).collect()
    }
}

/// A Debian version (epoch, upstream, revision), ordered as dpkg orders them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(debversion::Version);

impl FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{}` is not a Debian version", crate::error::one_line(s)));
        }
        debversion::Version::from_str(s).map(Version).map_err(|_| format!("`{}` is not a Debian version", crate::error::one_line(s)))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What `bake audit` looks for: a package below the version that fixes it (optionally for a CVE),
/// of one architecture when the spec names one (`libssl3:arm64<3.0.13`, as dpkg names packages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vulnerable {
    pub package: String,
    pub arch: Option<String>,
    pub fixed: Version,
    pub cve: Option<String>,
}

/// Why `v` is not a version as Debian policy writes them (dpkg refuses these), if it is not:
/// `[epoch:]upstream[-revision]`, the epoch digits, the upstream starting with a digit, the
/// revision not empty; only letters, digits and `.+~` (and `-`, `:` where they separate).
/// https://www.debian.org/doc/debian-policy/ch-controlfields.html#version
pub fn version_problem(v: &str) -> Option<String> {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) => (Some(e), r),
        None => (None, v),
    };
    if let Some(e) = epoch {
        if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
            return Some("its epoch (before `:`) must be digits".into());
        }
    }
    let (upstream, revision) = match rest.rsplit_once('-') {
        Some((u, r)) => (u, Some(r)),
        None => (rest, None),
    };
    if !upstream.starts_with(|c: char| c.is_ascii_digit()) {
        return Some("its upstream version must start with a digit".into());
    }
    let ok = |s: &str, extra: &[u8]| s.bytes().all(|b| b.is_ascii_alphanumeric() || b".+~".contains(&b) || extra.contains(&b));
    if !ok(upstream, b"-:") {
        return Some("only letters, digits and . + ~ (and - or : where they separate) may appear in it".into());
    }
    match revision {
        Some("") => Some("its revision (after the last `-`) is empty".into()),
        Some(r) if !ok(r, b"") => Some("its revision may hold only letters, digits and . + ~".into()),
        _ => None,
    }
}

impl Vulnerable {
    /// `openssl<3.0.13`.
    pub fn parse(s: &str) -> Result<Vulnerable, String> {
        if s.chars().any(char::is_control) {
            return Err(format!("`{}`: a control character (a newline?) in PACKAGE<VERSION", crate::error::one_line(s)));
        }
        let s = s.trim();
        let Some((name, version)) = s.split_once('<') else {
            return Err(format!("`{}`: write PACKAGE<VERSION (the first fixed version), e.g. openssl<3.0.13", crate::error::one_line(s)));
        };
        let (name, version) = (name.trim(), version.trim());
        let (name, arch) = match name.split_once(':') {
            Some((n, a)) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') => (n, Some(a.to_string())),
            Some(_) => return Err(format!("`{}`: write PACKAGE or PACKAGE:ARCH (e.g. libssl3:arm64) before <", crate::error::one_line(s))),
            None => (name, None),
        };
        if version.starts_with('=') {
            return Err(format!(
                "`{}`: write PACKAGE<VERSION with the first fixed version (below it is affected); <= is not a bound bake takes",
                crate::error::one_line(s)
            ));
        }
        if !crate::config::checks::debian_package(name) {
            return Err(format!("`{}`: `{}` is not a Debian package name", crate::error::one_line(s), crate::error::one_line(name)));
        }
        if let Some(why) = version_problem(version) {
            return Err(format!("`{}`: `{}` is not a Debian version: {why}", crate::error::one_line(s), crate::error::one_line(version)));
        }
        let fixed = Version::from_str(version).map_err(|e| format!("`{}`: {e}", crate::error::one_line(s)))?;
        Ok(Vulnerable { package: name.to_string(), arch, fixed, cve: None })
    }

    /// A file of them: one per line, `PACKAGE<VERSION [CVE-ID]`; `#` starts a comment.
    pub fn parse_file(text: &str, file: &str) -> Result<Vec<Vulnerable>, String> {
        let mut out = Vec::new();
        // A byte-order mark some editors write is not part of the first line.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let spec = words.next().unwrap_or("");
            let mut v = Vulnerable::parse(spec).map_err(|e| format!("{file}:{}: {e}", n + 1))?;
            if let Some(cve) = words.next() {
                if !crate::patch::valid_cve(cve) {
                    return Err(format!("{file}:{}: `{}` is not a CVE id (CVE-YYYY-NNNN)", n + 1, crate::error::one_line(cve)));
                }
                v.cve = Some(cve.to_string());
            }
            if let Some(extra) = words.next() {
                return Err(format!("{file}:{}: unexpected `{}`: a line is PACKAGE<VERSION [CVE-ID]", n + 1, crate::error::one_line(extra)));
            }
            out.push(v);
        }
        if out.is_empty() {
            return Err(format!("{file}: no PACKAGE<VERSION line"));
        }
        Ok(out)
    }

    /// The installed versions of the package that are below the fixed version.
    pub fn affects<'a>(&self, inv: &'a Inventory) -> Vec<&'a Package> {
        inv.versions(&self.package)
            .into_iter()
            .filter(|p| self.arch.as_ref().is_none_or(|a| *a == p.arch))
            .filter(|p| Version::from_str(&p.version).map(|v| v < self.fixed).unwrap_or(false))
            .collect()
    }
}

impl Vulnerable {
    /// `PACKAGE[:ARCH]<VERSION`, without the CVE.
    pub fn spec(&self) -> String {
        match &self.arch {
            Some(a) => format!("{}:{a}<{}", self.package, self.fixed),
            None => format!("{}<{}", self.package, self.fixed),
        }
    }
}

impl fmt::Display for Vulnerable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.spec())?;
        if let Some(c) = &self.cve {
            write!(f, " ({c})")?;
        }
        Ok(())
    }
}

/// Pure: what of `fixes` `inv` still holds below the fix, one phrase each
/// (`openssl 3.0.2-0ubuntu1.15 (below openssl<3.0.13)`).
pub fn still_below(inv: &Inventory, fixes: &[Vulnerable]) -> Vec<String> {
    let mut out = Vec::new();
    for v in fixes {
        for p in v.affects(inv) {
            out.push(format!("{} {} (below {})", p.name, p.version, v.spec()));
        }
    }
    out
}

/// Per package name, its versions: for showing what an image holds of the packages asked about.
pub fn held<'a>(inv: &'a Inventory, packages: &[&str]) -> BTreeMap<String, Vec<&'a str>> {
    let mut out: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for p in inv.packages.iter().filter(|p| packages.contains(&p.name.as_str())) {
        out.entry(p.name.clone()).or_default().push(&p.version);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn debian_order_not_string_order() {
        // String order says 3.0.2 > 3.0.13; Debian's says otherwise.
        assert!(v("3.0.2-0ubuntu1.15") < v("3.0.13-0ubuntu3"));
        assert!(v("3.0.13-0ubuntu3") < v("3.0.13-0ubuntu3.1"));
        // An epoch outranks everything after it.
        assert!(v("1:1.0-1") > v("9.9-1"));
        assert!(v("2:1.0") > v("1:9.0"));
        // `~` sorts before everything, even the end of the string: a pre-release is older.
        assert!(v("3.0.13~rc1-1") < v("3.0.13-1"));
        assert!(v("1.0~~") < v("1.0~"));
        assert!(v("1.0-1") == v("0:1.0-1"));
        // Letters before non-letters in the non-digit parts; digits as numbers.
        assert!(v("1.0a") < v("1.0+"));
        assert!(v("1.10") > v("1.9"));
    }

    #[test]
    fn a_spec_is_package_below_version() {
        let s = Vulnerable::parse("openssl<3.0.13").unwrap();
        assert_eq!((s.package.as_str(), s.fixed.to_string().as_str()), ("openssl", "3.0.13"));
        assert_eq!(Vulnerable::parse(" libssl3 < 1:3.0.13-0ubuntu3 ").unwrap().fixed, v("1:3.0.13-0ubuntu3"));
        assert_eq!(Vulnerable::parse("libssl3:arm64<3.0.13").unwrap().arch.as_deref(), Some("arm64"));
        assert!(Vulnerable::parse_file("\u{feff}openssl<3\n", "bom.txt").is_ok(), "a byte-order mark is not part of the name");
        for bad in [
            "openssl<1:",
            "openssl<1-",
            "openssl<a",
            "openssl<3:",
            "openssl<x:1",
            "openssl<1.0-a_b",
            "libssl3:<3",
            "libssl3:AMD64<3",
            "openssl<=3.0.13",
            "openssl",
            "openssl>3",
            "<3.0",
            "Open_SSL<3",
            "openssl<",
            "openssl<3 0",
            "openssl<\n3",
            "*<1",
        ] {
            assert!(Vulnerable::parse(bad).is_err(), "{bad:?}");
        }
        let f = Vulnerable::parse_file("# advisories\nopenssl<3.0.13 CVE-2024-0727\n\nlibssl3<3.0.13  # same\n", "a.txt").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].cve.as_deref(), Some("CVE-2024-0727"));
        assert!(Vulnerable::parse_file("openssl<3 CVE-1\n", "a.txt").unwrap_err().starts_with("a.txt:1: `CVE-1` is not a CVE id"));
        assert!(Vulnerable::parse_file("\n# nothing\n", "a.txt").is_err());
    }

    #[test]
    fn parses_the_document_and_finds_what_is_below() {
        let doc = format!(
            "{HEADER}\n#kernel 6.8.0-1012-aws\n#packages\nopenssl\t3.0.2-0ubuntu1.15\tamd64\nlibssl3\t3.0.2-0ubuntu1.15\tamd64\nlibssl3\t3.0.13-0ubuntu3\ti386\nzlib1g\t1:1.2.11.dfsg-2ubuntu9.2\tamd64\n#containers\nnginx\t1.25\tsha256:abc\n"
        );
        let inv = parse(&doc).unwrap();
        assert_eq!(inv.kernel, "6.8.0-1012-aws");
        assert_eq!(inv.packages.len(), 4);
        assert_eq!(inv.containers, vec![Container { repository: "nginx".into(), tag: "1.25".into(), digest: "sha256:abc".into() }]);
        let s = Vulnerable::parse("libssl3<3.0.13").unwrap();
        let hit: Vec<&str> = s.affects(&inv).iter().map(|p| p.arch.as_str()).collect();
        assert_eq!(hit, ["amd64"], "only the architecture below the fix");
        assert!(Vulnerable::parse("libssl3:i386<3.0.13").unwrap().affects(&inv).is_empty(), "of the architecture named");
        assert!(Vulnerable::parse("openssl<3.0.2-0ubuntu1.15").unwrap().affects(&inv).is_empty(), "equal is fixed");
        assert!(Vulnerable::parse("curl<9").unwrap().affects(&inv).is_empty(), "not installed is not affected");
        assert_eq!(inv.sha256(), parse(&doc).unwrap().sha256(), "the digest is stable");
        assert!(parse("#packages\n").is_err());
        assert!(parse(&format!("{HEADER}\n#packages\nopenssl 3.0\n")).unwrap_err().contains("line 3"));
        assert!(parse(&format!("{HEADER}\n#packages\n")).unwrap_err().contains("no Debian package"));
        assert_eq!(first_page(&format!("#size 12 {}\nabc", "a".repeat(64))).unwrap().0, 12);
        assert!(first_page("[sandbox] done\n").is_err());
    }
}
