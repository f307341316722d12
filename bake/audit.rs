//! `bake audit`: which images bake made hold a package below the version that fixes it, and what
//! uses them (groups, launch template versions, launch configurations, parameters) — read from
//! each image's inventory (`bake:inventory`), this machine's copy or the shared state's.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::catalog::ImageInfo;
use crate::error::Result;
use crate::inventory::{Inventory, Vulnerable};

/// One package of an image below a fix.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// What was asked: `openssl<3.0.13`.
    pub below: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cve: Option<String>,
    pub package: String,
    pub version: String,
    pub arch: String,
}

#[derive(Serialize, Clone, Debug)]
pub struct Affected {
    #[serde(flatten)]
    pub image: ImageInfo,
    pub hits: Vec<Hit>,
}

/// An image whose inventory could not be read: it may or may not be affected.
#[derive(Serialize, Clone, Debug)]
pub struct Unknown {
    pub id: String,
    pub region: String,
    pub role: String,
    pub env: String,
    pub used_by: Vec<String>,
    pub why: String,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Report {
    pub asked: Vec<String>,
    /// Images looked at.
    pub checked: usize,
    pub affected: Vec<Affected>,
    pub unknown: Vec<Unknown>,
}

/// Pure: the packages of `inv` below each of `vulns`.
pub fn hits(inv: &Inventory, vulns: &[Vulnerable]) -> Vec<Hit> {
    let mut out = Vec::new();
    for v in vulns {
        for p in v.affects(inv) {
            out.push(Hit { below: v.spec(), cve: v.cve.clone(), package: p.name.clone(), version: p.version.clone(), arch: p.arch.clone() });
        }
    }
    out
}

/// Reads each image's inventory (once per digest) and checks it.
pub async fn run(root: &Path, images: Vec<ImageInfo>, vulns: &[Vulnerable]) -> Result<Report> {
    let mut report = Report { asked: vulns.iter().map(|v| v.to_string()).collect(), checked: images.len(), ..Default::default() };
    let mut read: BTreeMap<String, std::result::Result<Option<Inventory>, String>> = BTreeMap::new();
    for image in images {
        let unknown = |why: String| Unknown {
            id: image.id.clone(),
            region: image.region.clone(),
            role: image.role.clone(),
            env: image.env.clone(),
            used_by: image.used_by.clone(),
            why,
        };
        let Some(digest) = image.inventory.clone() else {
            report.unknown.push(unknown(format!("it has no {} tag: it was made before bake kept inventories", crate::tags::INVENTORY)));
            continue;
        };
        if !read.contains_key(&digest) {
            let inv = crate::stages::inventory::load(root, &digest).await.map_err(|e| e.to_string());
            read.insert(digest.clone(), inv);
        }
        match read.get(&digest) {
            Some(Err(e)) => report.unknown.push(unknown(e.clone())),
            None | Some(Ok(None)) => report
                .unknown
                .push(unknown(format!("its inventory {digest} is neither in this machine's state folder nor in a shared state (bake.toml [state]) here"))),
            Some(Ok(Some(inv))) => {
                let h = hits(inv, vulns);
                if !h.is_empty() {
                    report.affected.push(Affected { image, hits: h });
                }
            }
        }
    }
    Ok(report)
}

/// Pure: whether an image is in use by something that runs or launches it (a rollback target
/// alone does not).
pub fn running(used_by: &[String]) -> bool {
    used_by.iter().any(|u| !u.starts_with("rollback of "))
}

/// Pure: the roles and envs (and architectures) an affected image is in use for — what `bake
/// patch --affected` patches — sorted, once each.
pub fn in_use(report: &Report) -> Vec<(String, String, Option<String>)> {
    // What a group would go back to with `bake roll --rollback` does not run: not in use here.
    let running = |a: &&Affected| running(&a.image.used_by);
    let mut out: Vec<(String, String, Option<String>)> =
        report.affected.iter().filter(running).map(|a| (a.image.role.clone(), a.image.env.clone(), a.image.arch.clone())).collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Package;

    #[test]
    fn hits_and_what_is_in_use() {
        let inv = Inventory {
            kernel: "6.5".into(),
            packages: vec![
                Package { name: "openssl".into(), version: "3.0.2-0ubuntu1.15".into(), arch: "amd64".into() },
                Package { name: "libssl3".into(), version: "3.0.13-0ubuntu3".into(), arch: "amd64".into() },
            ],
            containers: vec![],
        };
        let vulns = Vulnerable::parse_file("openssl<3.0.13 CVE-2024-0727\nlibssl3<3.0.13\n", "f").unwrap();
        let h = hits(&inv, &vulns);
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].below.as_str(), h[0].cve.as_deref(), h[0].version.as_str()), ("openssl<3.0.13", Some("CVE-2024-0727"), "3.0.2-0ubuntu1.15"));
        let img = |id: &str, role: &str, used: &[&str]| ImageInfo {
            id: id.into(),
            role: role.into(),
            env: "prod".into(),
            used_by: used.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let r = Report {
            affected: vec![
                Affected { image: img("a", "web", &["group web"]), hits: h.clone() },
                Affected { image: img("b", "web", &["parameter /bake/web/prod/ami-id"]), hits: h.clone() },
                Affected { image: img("c", "old", &[]), hits: h.clone() },
                Affected { image: img("d", "older", &["rollback of group older"]), hits: h },
            ],
            ..Default::default()
        };
        assert_eq!(in_use(&r), vec![("web".to_string(), "prod".to_string(), None)], "an unused image needs prune, not a patch");
    }
}
