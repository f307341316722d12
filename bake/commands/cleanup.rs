//! `bake cleanup`: replay a bake's journal, or sweep bake-managed orphans.

use clap::Args;
use serde_json::json;

use super::{duration, failed, json, out, runtime, ExitStatus, Global, Output};
use crate::config::Secs;

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// The bake id printed by `bake build` (b-…)
    #[arg(required_unless_present = "orphans")]
    pub bake_id: Option<String>,
    /// Find bake-managed resources whose bake is not running
    #[arg(long, conflicts_with = "bake_id")]
    pub orphans: bool,
    /// Only orphans at least this old
    #[arg(long, default_value = "6h", value_name = "DURATION", value_parser = duration)]
    pub older_than: Secs,
    /// Remove the orphans found without asking
    #[arg(long)]
    pub yes: bool,
}

pub fn cleanup(g: &Global, a: &CleanupArgs) -> ExitStatus {
    if a.orphans {
        return orphans(g, a);
    }
    let Some(id) = a.bake_id.as_deref().and_then(crate::journal::BakeId::parse) else {
        eprintln!("error: {} is not a bake id (b- and 12 hex digits)", a.bake_id.as_deref().unwrap_or(""));
        return ExitStatus::Usage;
    };
    let rt = runtime();
    if let Err(code) = super::shared_state(g, &rt) {
        return code;
    }
    let aws = rt.block_on(crate::aws::Aws::load(&super::connection(g)));
    let extra: Vec<String> = g.region.iter().cloned().collect();
    match rt.block_on(crate::recovery::replay(&aws, &g.root, &id, &extra)) {
        Ok(o) if !o.journal && o.removed.is_empty() && o.errors.is_empty() => failed(format!(
            "bake {id}: no journal in {} and nothing tagged with it in {}: nothing to clean up (is this the project folder and the region the bake ran in?)",
            crate::journal::journal_dir(&g.root).display(),
            if o.regions.is_empty() { "any region (none known: give --region)".to_string() } else { o.regions.join(", ") }
        )),
        Ok(o) => {
            if !g.quiet {
                let mut text = String::new();
                for r in &o.removed {
                    text.push_str(&format!("removed {r}\n"));
                }
                text.push_str(&format!("bake {id}: {} resource(s) handled", o.removed.len()));
                out(&text);
            }
            for e in &o.errors {
                eprintln!("error: {e}");
            }
            if o.errors.is_empty() {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            }
        }
        Err(e) => failed(e),
    }
}

fn orphans(g: &Global, a: &CleanupArgs) -> ExitStatus {
    let rt = runtime();
    // With shared state, bakes running on other machines are told from their locks and journals.
    if let Err(code) = super::shared_state(g, &rt) {
        return code;
    }
    let aws = rt.block_on(crate::aws::Aws::load(&super::connection(g)));
    let regions = match &g.region {
        Some(r) => vec![r.clone()],
        None => match rt.block_on(crate::recovery::all_regions(&aws)) {
            Ok(r) => r,
            Err(e) => return failed(e),
        },
    };
    let sweep = match rt.block_on(crate::recovery::find_orphans(&aws, &g.root, &regions, a.older_than.as_duration())) {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    let found = sweep.orphans;
    if g.output == Output::Json {
        let v: Vec<_> = found
            .iter()
            .map(|o| json!({"type": o.resource.kind, "id": o.resource.id, "region": o.resource.region, "bake_id": o.bake_id, "age_secs": o.age.map(|a| a.as_secs())}))
            .collect();
        let skipped: Vec<_> = sweep.skipped.iter().map(|(r, why)| json!({"type": r.kind, "id": r.id, "region": r.region, "why": why})).collect();
        out(&json(&json!({"orphans": v, "skipped": skipped, "removed": a.yes})));
    } else {
        let mut text = String::new();
        for (r, why) in &sweep.skipped {
            text.push_str(&format!("skipped {r}: {why}\n"));
        }
        if found.is_empty() {
            text.push_str(&format!("no orphans older than {}", a.older_than));
        }
        for o in &found {
            text.push_str(&format!("{} (bake {})\n", o.resource, o.bake_id));
        }
        out(&text);
    }
    if found.is_empty() {
        return ExitStatus::Success;
    }
    if !a.yes {
        if g.output == Output::Text {
            out(&format!("{} orphan(s); run again with --yes to remove them", found.len()));
        }
        return ExitStatus::Success;
    }
    let errors = rt.block_on(crate::recovery::remove_orphans(&aws, &g.root, found));
    for e in &errors {
        eprintln!("error: {e}");
    }
    if errors.is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    }
}
